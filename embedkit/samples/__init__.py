"""Small sample files written for embedkit, shipped with it so the README's quick start runs anywhere.

The texts were written for this project (made-up product reviews, support tickets, help-centre articles and
questions); nothing is copied from another corpus. They are small enough that every quick-start command runs in
seconds, and labelled well enough that a classifier, a clustering and a similarity index have something to find.
``embedkit samples DIR`` (``write_samples``) copies them into a directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..artefact import absolute, writing_file
from ..errors import OutputError

# name -> what it holds, in the order the quick start uses them.
SAMPLES: dict[str, str] = {
    "reviews.csv": "60 product reviews: review_id, stars (1-5), body",
    "tickets.csv": "80 support tickets: ticket_id, label (billing, login, shipping, bug), body",
    "new_tickets.csv": "10 unlabelled support tickets: ticket_id, body",
    "docs.csv": "40 help-centre articles: doc_id, text",
    "more_docs.csv": "6 more articles to add to an index: doc_id, text",
    "questions.csv": "6 questions to search the articles with: question_id, question",
    "tickets.toml": "a pipeline: embed tickets.csv, train a classifier, label new_tickets.csv",
}


@dataclass
class SamplesResult:
    """What ``write_samples`` wrote, and where."""

    directory: Path
    written: list[str] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        lines = [f"wrote {len(self.written)} sample files into {self.directory}:"]
        width = max(len(name) for name in self.written) if self.written else 0
        lines += [f"  {name:<{width}}  {SAMPLES[name]}" for name in self.written]
        return lines


def sample_bytes(name: str) -> bytes:
    """The shipped bytes of one sample file (a name of ``SAMPLES``)."""
    if name not in SAMPLES:
        raise KeyError(f"no sample file {name!r}; samples: {', '.join(SAMPLES)}")
    return resources.files(__name__).joinpath(name).read_bytes()


def write_samples(directory: str | Path = ".", *, overwrite: bool = False, wait: bool = False) -> SamplesResult:
    """Copy every sample file into ``directory`` (created if missing) and return what was written.

    Files already there are refused, all named in one message, before anything is written (they may be the
    user's own files of the same name), unless ``overwrite``. Each file is written under its lock and switched in
    whole (``artefact.writing_file``), so a kill never leaves half a file.
    """
    target = absolute(directory)
    if target.exists() and not target.is_dir():
        raise OutputError(f"{target} is a file; give a directory to write the samples into")
    existing = [name for name in SAMPLES if (target / name).exists()]
    if existing and not overwrite:
        raise OutputError(
            f"{target} already has {', '.join(existing)}; pass --overwrite to replace them, or choose another directory"
        )
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {target}: {exc.strerror or exc}") from exc
    result = SamplesResult(directory=target)
    for name in SAMPLES:
        with writing_file(target / name, overwrite=overwrite, wait=wait) as tmp:
            tmp.write_bytes(sample_bytes(name))
        result.written.append(name)
    return result


__all__ = ["SAMPLES", "SamplesResult", "sample_bytes", "write_samples"]
