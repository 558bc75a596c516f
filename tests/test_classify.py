"""The classify stage: embedkit train / predict, the model directory, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from embedkit import ExtractConfig, InputError
from embedkit.classify import (
    CLASSIFIERS,
    EVAL_PREDICTIONS,
    MANIFEST,
    MODEL_FILE,
    ClassifierOptions,
    load_model,
    predict_file,
    train,
)
from embedkit.cli import cli
from embedkit.embed import embed_file


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


@pytest.fixture
def features(features_file):
    return features_file(n=60)


@pytest.fixture
def model_dir(features, tmp_path):
    out = tmp_path / "model"
    train(features, "label", out, seed=1)
    return out


def test_train_cli_writes_a_complete_model_dir(features, tmp_path):
    out = tmp_path / "m"
    result = run("train", features, "--label-column", "label", "-o", out)
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "macro F1" in result.output and "hold-out (12 test rows)" in result.output
    for label in "abc":  # the per-class report
        assert f"\n{label:>12}  " in result.output
    assert {p.name for p in out.iterdir()} == {
        MANIFEST,
        MODEL_FILE,
        "metrics.json",
        "confusion_matrix.png",
        EVAL_PREDICTIONS,
    }
    metrics = json.loads((out / "metrics.json").read_text())
    # refit by default: evaluated on the 12 held-out rows, then the saved model fitted on all 60, and it says so
    assert metrics["evaluation"]["mode"] == "holdout" and metrics["evaluation"]["n_train"] == 48
    assert metrics["fit_rows"] == 60 and metrics["refit_on_all_rows"] is True
    assert "fitted on all 60 rows after the hold-out evaluation" in result.output
    assert 0 <= metrics["accuracy"] <= 1 and set(metrics["per_class"]) == {"a", "b", "c"}
    assert sum(map(sum, metrics["confusion_matrix"]["matrix"])) == 12
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["extract_config"]["layers"] == [2] and manifest["extract_config"]["pooling"] == ["mean"]
    assert manifest["classes"] == ["a", "b", "c"] and manifest["dim"] == 32


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # the MLP is capped for speed
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_every_classifier_trains_saves_and_loads(features, tmp_path, name):
    result = train(
        features,
        "label",
        tmp_path / name,
        classifier=name,
        options=ClassifierOptions(k_neighbors=3, hidden_size=16, max_iter=200),
    )
    model = load_model(tmp_path / name)
    assert model.manifest["classifier"] == name and model.classes == ["a", "b", "c"]
    assert model.has_proba == (name in ("logreg", "knn", "mlp"))
    evaluated = pq.read_table(tmp_path / name / EVAL_PREDICTIONS)
    assert evaluated.num_rows == result.metrics["evaluation"]["n_test"]


def test_model_round_trip_predicts_like_the_fitted_estimator(features, tmp_path):
    from embedkit.store import open_features

    model_dir = tmp_path / "held-out-fit"
    result = train(features, "label", model_dir, seed=1, refit=False)
    assert result.metrics["fit_rows"] == 48 and "training rows only" in result.summary_lines()[-1]
    X, table, _ = open_features(features).load(extra=["label"])
    model = load_model(model_dir)
    labels, proba = model.predict_vectors(X)
    np.testing.assert_array_equal(labels, model.estimator.predict(X))
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-5)
    evaluated = pq.read_table(model_dir / EVAL_PREDICTIONS).to_pylist()
    by_id = dict(zip(table.column("id").to_pylist(), labels))
    assert all(by_id[row["id"]] == row["predicted"] for row in evaluated)  # the saved model is the evaluated one


def test_refit_reuses_the_settings_the_training_rows_chose(features, tmp_path):
    refit = train(features, "label", tmp_path / "refit", seed=1).metrics
    held = train(features, "label", tmp_path / "held", seed=1, refit=False).metrics
    assert refit["accuracy"] == held["accuracy"]  # one evaluation, one search (on the 48 training rows)
    assert refit["search"]["rows"] == 48 and refit["search"]["cv_accuracy"] == held["search"]["cv_accuracy"]
    assert load_model(tmp_path / "refit").estimator[-1].C == refit["search"]["chosen_C"]
    assert refit["fit_rows"] == 60 and held["fit_rows"] == 48 and not held["refit_on_all_rows"]
    result = run("train", features, "-y", "label", "-o", tmp_path / "cli", "--no-refit")
    assert result.exit_code == 0 and "48 training rows only" in result.output
    assert "saved     fitted on the 48 training rows only" in run("info", tmp_path / "cli").output


def test_cv_reports_folds_and_fits_on_every_row(features, tmp_path):
    result = run(
        "train", features, "-y", "label", "-o", tmp_path / "m", "--cv", 3, "--classifier", "ridge", "--alpha", 2.0
    )
    assert result.exit_code == 0, result.output
    assert "3-fold stratified CV" in result.output
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert len(metrics["evaluation"]["fold_accuracy"]) == 3 and metrics["fit_rows"] == 60
    assert metrics["options"]["alpha"] == 2.0
    assert sorted(set(pq.read_table(tmp_path / "m" / EVAL_PREDICTIONS).column("fold").to_pylist())) == [0, 1, 2]


def test_predict_raw_text_equals_predict_on_features(model_dir, features, tmp_path):
    raw = features.with_name(features.name + ".csv")  # the CSV the fixture embedded
    out_text, out_feat = tmp_path / "from_text.parquet", tmp_path / "from_features.parquet"
    r1 = run("predict", model_dir, raw, "-o", out_text, "--keep", "label", "-q")  # ids from doc_id, as trained
    r2 = run("predict", model_dir, features, "-o", out_feat, "--keep", "label")
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    a, b = pq.read_table(out_text), pq.read_table(out_feat)
    assert a.column_names == b.column_names == ["id", "label", "status", "prediction", "proba_a", "proba_b", "proba_c"]
    assert a.column("id").to_pylist() == b.column("id").to_pylist()
    assert a.column("prediction").to_pylist() == b.column("prediction").to_pylist()
    for c in ("proba_a", "proba_b", "proba_c"):
        np.testing.assert_allclose(a.column(c).to_numpy(), b.column(c).to_numpy(), atol=1e-4)
    assert "60 predicted (text input)" in r1.output and "60 predicted (features input)" in r2.output


def test_predict_reads_new_text_from_the_columns_the_training_text_came_from(write_csv, tiny_gpt2_shared, tmp_path):
    # The quick start's case: trained on --text-column body, predict on a new file needs no flag (issue #23).
    rows = [
        {
            "ticket": f"t{i}",
            "body": f"Ticket number {i} is about {'billing' if i % 2 else 'login'}.",
            "label": "ab"[i % 2],
        }
        for i in range(20)
    ]
    src = write_csv(rows, name="tickets.csv")
    config = ExtractConfig(model=tiny_gpt2_shared, layers=(2,), pooling=("mean",))
    embed_file(
        src,
        tmp_path / "t.parquet",
        config,
        text_column="body",
        id_column="ticket",
        keep=("label",),
        device="cpu",
        progress=False,
    )
    train(tmp_path / "t.parquet", "label", tmp_path / "m", test_size=0)
    manifest = json.loads((tmp_path / "m" / MANIFEST).read_text())
    assert manifest["text_column"] == "body" and manifest["id_column"] == "ticket"
    assert "raw text from column 'body', ids from 'ticket'" in run("info", tmp_path / "m").output
    new = write_csv([{"ticket": "n1", "body": "Cannot log in."}, {"ticket": "n2", "body": "Charged twice."}], "new.csv")
    result = run("predict", tmp_path / "m", new, "-o", tmp_path / "p.parquet", "-q")
    assert result.exit_code == 0, result.output
    assert pq.read_table(tmp_path / "p.parquet").column("id").to_pylist() == ["n1", "n2"]
    no_ids = write_csv([{"body": "Cannot log in."}], "no_ids.csv")  # the recorded id column is only a default
    predict_file(tmp_path / "m", no_ids, tmp_path / "q.parquet", progress=False)
    assert pq.read_table(tmp_path / "q.parquet").column("id").to_pylist() == [0]
    other = write_csv([{"message": "Cannot log in."}], "other.csv")  # another layout: the flags still override
    predict_file(tmp_path / "m", other, tmp_path / "r.parquet", text_column="message", progress=False)
    assert pq.read_table(tmp_path / "r.parquet").num_rows == 1
    missing = run("predict", tmp_path / "m", other, "-o", tmp_path / "s.parquet")
    assert missing.exit_code == 3 and "'body' not found" in missing.output


def test_several_embedding_columns_are_listed_with_the_flag_that_picks_one(features_file, tmp_path):
    multi = features_file(n=30, name="multi.parquet", layers=(1, 2))
    result = run("train", multi, "-y", "label", "-o", tmp_path / "m")
    assert result.exit_code == 3 and "--column" in result.output and "column=" in result.output
    assert "embedding_l1_mean" in result.output and "embedding_l2_mean" in result.output
    assert train(multi, "label", tmp_path / "m2", column="embedding_l2_mean").metrics["column"] == "embedding_l2_mean"


def test_predict_keeps_bad_text_rows_with_null_prediction(model_dir, write_csv, tmp_path):
    src = write_csv([{"text": "A good text."}, {"text": ""}, {"text": "   "}, {"text": "Another one."}])
    out = tmp_path / "p.jsonl"
    result = run("predict", model_dir, src, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok", "empty", "empty", "ok"]
    assert rows[1]["prediction"] is None and rows[1]["proba_a"] is None
    assert rows[0]["prediction"] in "abc"
    assert "2 kept with no prediction (2 empty)" in result.output


def test_predict_refuses_features_with_other_settings(model_dir, features_file, tmp_path):
    other = features_file(n=6, name="other.parquet", layers=(1,))
    result = run("predict", model_dir, other, "-o", tmp_path / "p.parquet")
    assert result.exit_code == 6
    assert "layers: model has [2], input has [1]" in result.output
    assert not (tmp_path / "p.parquet").exists()


def test_predict_picks_the_matching_column_of_a_multi_column_file(model_dir, features_file, tmp_path):
    multi = features_file(n=9, name="multi.parquet", layers=(1, 2))
    result = run("predict", model_dir, multi, "-o", tmp_path / "p.csv")
    assert result.exit_code == 0, result.output
    assert "9 predicted" in result.output


def test_label_column_missing_lists_columns(features, tmp_path):
    result = run("train", features, "-y", "category", "-o", tmp_path / "m")
    assert result.exit_code == 3
    assert "'category' not found" in result.output and "id, text, label" in result.output
    assert not (tmp_path / "m").exists()


def test_single_class_is_refused(features_file, tmp_path):
    result = run("train", features_file(n=10, labels=("only",)), "-y", "label", "-o", tmp_path / "m")
    assert result.exit_code == 3 and "single class ('only', 10 rows)" in result.output


def test_class_too_small_for_holdout_and_cv(features_file, tmp_path):
    path = features_file(n=21, labels=("a", "b") * 10 + ("rare",))
    holdout = run("train", path, "-y", "label", "-o", tmp_path / "m")
    assert holdout.exit_code == 3 and "class 'rare' has 1 row" in holdout.output
    cv = run("train", path, "-y", "label", "-o", tmp_path / "m", "--cv", 5)
    assert cv.exit_code == 3 and "class 'rare' has 1 row(s); stratified --cv 5 needs at least 5 per class" in cv.output
    assert run("train", path, "-y", "label", "-o", tmp_path / "m", "--test-size", 0).exit_code == 0  # no split needed


@pytest.mark.parametrize("cv", [None, 3])
def test_a_text_or_id_column_named_as_labels_is_refused_briefly(features, tmp_path, cv):
    result = run("train", features, "-y", "text", "-o", tmp_path / "m", *(["--cv", cv] if cv else []))
    assert result.exit_code == 3 and "'text' has 60 distinct values for 60 rows" in result.output
    assert "is it a text or id column rather than the classes?" in result.output
    assert len(result.output) < 400  # three labels, each cut to 40 characters, not 60 whole texts


def test_null_labels_are_skipped_with_a_count(features_file, tmp_path):
    path = features_file(n=40, labels=("a", "b", "c", ""))
    result = run("train", path, "-y", "label", "-o", tmp_path / "m")
    assert result.exit_code == 0, result.output
    assert "skipped 10 with a missing label" in result.output
    assert json.loads((tmp_path / "m" / "metrics.json").read_text())["rows_used"] == 30


def test_null_embeddings_are_skipped_with_a_count(write_csv, tiny_gpt2_shared, tmp_path):
    rows = [{"text": t, "label": "xy"[i % 2]} for i, t in enumerate(["Fine text here."] * 20)]
    rows[3]["text"] = rows[8]["text"] = ""
    path = tmp_path / "f.parquet"
    embed_file(
        write_csv(rows), path, ExtractConfig(model=tiny_gpt2_shared), keep=("label",), device="cpu", progress=False
    )
    result = run("train", path, "-y", "label", "-o", tmp_path / "m")
    assert result.exit_code == 0, result.output
    assert "18 rows, 2 classes" in result.output and "skipped 2 with a null embedding" in result.output


def test_model_dir_without_manifest_is_refused(model_dir, features, tmp_path):
    (model_dir / MANIFEST).unlink()
    result = run("predict", model_dir, features, "-o", tmp_path / "p.parquet")
    assert result.exit_code == 3
    assert "not a complete embedkit classifier model (no embedkit_model.json)" in result.output


def test_tampered_model_file_is_refused(model_dir):
    with open(model_dir / MODEL_FILE, "ab") as f:
        f.write(b"x")
    with pytest.raises(InputError, match="truncated or replaced; refusing to load it"):
        load_model(model_dir)
    with open(model_dir / MODEL_FILE, "r+b") as f:  # same size, one byte changed: the sha256 catches it
        f.truncate((model_dir / MODEL_FILE).stat().st_size - 1)
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(InputError, match="does not match the sha256"):
        load_model(model_dir)


class Sneaky:  # a type skops does not trust: loading it could run its code
    pass


def test_unknown_types_in_the_model_file_are_refused(model_dir):
    import skops.io as sio

    from embedkit.artefact import file_entry

    model = load_model(model_dir)
    model.estimator.sneaky_ = Sneaky()
    sio.dump(model.estimator, model_dir / MODEL_FILE)
    manifest = json.loads((model_dir / MANIFEST).read_text())
    manifest["files"][MODEL_FILE] = file_entry(model_dir / MODEL_FILE)  # consistent: skops' check must refuse
    (model_dir / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="test_classify.Sneaky"):
        load_model(model_dir)


def test_existing_outputs_need_overwrite(model_dir, features, tmp_path):
    again = run("train", features, "-y", "label", "-o", model_dir)
    assert again.exit_code == 5 and "--overwrite" in again.output
    assert run("train", features, "-y", "label", "-o", model_dir, "--overwrite", "-c", "knn").exit_code == 0
    assert load_model(model_dir).manifest["classifier"] == "knn"
    out = tmp_path / "p.parquet"
    assert run("predict", model_dir, features, "-o", out).exit_code == 0
    assert run("predict", model_dir, features, "-o", out).exit_code == 5


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--classifier", "forest"], 2, "'forest' is not one of"),
        (["--cv", 1], 2, "--cv"),
        (["--test-size", 1.5], 2, "--test-size"),
        (["-c", "knn", "--k-neighbors", 100], 2, "--k-neighbors 100 exceeds the 48 rows"),
    ],
)
def test_bad_options(features, tmp_path, args, code, message):
    result = run("train", features, "-y", "label", "-o", tmp_path / "m", *args)
    assert result.exit_code == code and message in result.output


def test_predict_output_needs_a_known_extension(model_dir, features, tmp_path):
    with pytest.raises(Exception, match="output format"):
        predict_file(model_dir, features, tmp_path / "p.xlsx")


def test_predict_texts_embeds_with_the_stored_settings(model_dir, features):
    table = pq.read_table(features)
    model = load_model(model_dir)
    labels, proba = model.predict_texts(table.column("text").to_pylist()[:5])
    X = np.array(table.column("embedding").to_pylist()[:5], dtype=np.float32)
    expected, expected_proba = model.predict_vectors(X)
    assert labels.tolist() == expected.tolist() and model.classes == ["a", "b", "c"]
    np.testing.assert_allclose(proba, expected_proba, atol=1e-4)
    with pytest.raises(InputError, match="empty"):
        model.predict_texts(["fine", ""])


def test_ridge_default_penalty_is_chosen_from_the_data():
    from embedkit.classify import RIDGE_ALPHAS, build_classifier

    # Fewer rows than dimensions, as with hidden states: labels unrelated to the vectors need a strong
    # penalty, labels written plainly in them a weaker one. A fixed default cannot serve both.
    rng = np.random.RandomState(0)
    X = rng.randn(90, 400).astype(np.float32)
    noise_labels = rng.randint(0, 3, 90)
    clean_labels = np.argmax(X[:, :3], axis=1)
    noisy = build_classifier("ridge").fit(X, noise_labels)[-1].alpha_
    clean = build_classifier("ridge").fit(X, clean_labels)[-1].alpha_
    assert {noisy, clean} <= set(RIDGE_ALPHAS) and noisy >= 10 * clean
    assert build_classifier("ridge", ClassifierOptions(alpha=1.0))[-1].alpha == 1.0  # --alpha still fixes it


def test_ridge_records_its_chosen_penalty_and_reloads_safely(features, tmp_path):
    result = run("train", features, "-y", "label", "-o", tmp_path / "m", "--classifier", "ridge")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    error = metrics["chosen_alpha_loo_error"]  # the CV score of the chosen alpha, shown with it
    assert error > 0
    assert (
        f"ridge (alpha {metrics['chosen_alpha']:g}, chosen by leave-one-out over alpha 0.01..10000 x 13 "
        f"(squared error {error:.4f}))" in result.output
    )
    assert f"(squared error {error:.4f})" in run("info", tmp_path / "m").output
    model = load_model(tmp_path / "m")  # RidgeClassifierCV loads with skops' default trust: no extra types
    assert model.predict_vectors(np.zeros((2, model.dim)))[0].shape == (2,)
    run("train", features, "-y", "label", "-o", tmp_path / "fixed", "--classifier", "ridge", "--alpha", 3)
    assert "chosen_alpha" not in json.loads((tmp_path / "fixed" / "metrics.json").read_text())


def test_train_reports_accuracy_and_error_rates_per_group(features_file, tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from embedkit.cli import cli

    path = features_file(n=90)
    table = pq.read_table(path)
    groups = ["north" if i % 3 else "south" for i in range(table.num_rows)]
    groups[5] = None  # a missing group is a group of its own
    pq.write_table(table.append_column("region", pa.array(groups)), path)
    result = CliRunner().invoke(
        cli, ["train", str(path), "--label-column", "label", "-o", str(tmp_path / "m"), "--group-column", "region"]
    )
    assert result.exit_code == 0, result.output
    assert "per group of 'region'" in result.output and "accuracy gap between groups" in result.output
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    report = metrics["groups"]
    assert {g["group"] for g in report["groups"]} <= {"north", "south", "(missing)"}
    assert sum(g["rows"] for g in report["groups"]) == report["overall"]["rows"] == metrics["evaluation"]["n_test"]
    assert report["overall"]["accuracy"] == pytest.approx(metrics["accuracy"])
    missing = CliRunner().invoke(
        cli, ["train", str(path), "--label-column", "label", "-o", str(tmp_path / "m2"), "--group-column", "nope"]
    )
    assert missing.exit_code == 3 and "nope" in missing.output


def test_info_on_a_model_directory_shows_classes_evaluation_and_groups(features_file, tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from embedkit.cli import cli

    path = features_file(n=60)
    table = pq.read_table(path)
    pq.write_table(table.append_column("region", pa.array(["n", "s"] * (table.num_rows // 2))), path)
    model = tmp_path / "m"
    trained = CliRunner().invoke(cli, ["train", str(path), "-y", "label", "-o", str(model), "--group-column", "region"])
    assert trained.exit_code == 0, trained.output
    shown = CliRunner().invoke(cli, ["info", str(model)])
    assert shown.exit_code == 0, shown.output
    assert "3 classes (a, b, c)" in shown.output and "evaluated holdout: accuracy" in shown.output
    assert "per group of 'region'" in shown.output
    as_json = json.loads(CliRunner().invoke(cli, ["info", str(model), "--json"]).output)
    assert as_json["metrics"]["groups"]["overall"]["rows"] == as_json["metrics"]["evaluation"]["n_test"]
    (model / "metrics.json").write_text("{}")  # tampered: the manifest's sha256 no longer matches
    refused = CliRunner().invoke(cli, ["info", str(model)])
    assert refused.exit_code == 3 and "metrics.json" in refused.output


def _overfitting_set(rows: int = 80, dims: int = 300, seed: int = 0):
    """Few rows, many noise dimensions, the class written weakly in two of them: C=1 fits the noise."""
    rng = np.random.RandomState(seed)
    y = rng.randint(0, 2, rows)
    X = rng.randn(rows, dims).astype(np.float32)
    X[:, :2] += (2 * y[:, None] - 1) * 0.8
    return X, y


def _cv_accuracy(estimator, X, y) -> float:
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    return float(cross_val_score(clone(estimator), X, y, cv=folds, scoring="accuracy").mean())


def test_logreg_default_chooses_a_stronger_penalty_when_c1_overfits():
    from embedkit.classify import LOGREG_CS, fit_classifier

    X, y = _overfitting_set()
    estimator, search = fit_classifier(X, y, "logreg", ClassifierOptions(), seed=0)
    assert search is not None and search["grid_C"] == list(LOGREG_CS)
    assert search["chosen_C"] < 1.0  # stronger regularisation than the old fixed default
    assert estimator[-1].C == search["chosen_C"]
    assert ("scale" in estimator.named_steps) == search["chosen_standardize"]
    tried = [loss for v in search["cv_log_loss"].values() for loss in v if loss is not None]
    assert search["score"] == "log_loss" and search["chosen_cv_log_loss"] == min(tried)
    key = "scaled" if search["chosen_standardize"] else "unscaled"
    chosen_at = search["grid_C"].index(search["chosen_C"])
    assert search["cv_accuracy"][key][chosen_at] == search["chosen_cv_accuracy"]  # both scores of every C tried
    # The path stops once more C only overfits: the large-C end of the scaled path is never fitted here.
    assert search["cv_accuracy"]["scaled"][-1] is None and search["cv_log_loss"]["scaled"][-1] is None
    from embedkit.classify import build_classifier, settled

    # Scored alike (5-fold CV of the whole pipeline), the chosen setting beats StandardScaler + C=1, the old default.
    chosen = _cv_accuracy(build_classifier("logreg", settled(ClassifierOptions(), search)), X, y)
    old_default = _cv_accuracy(build_classifier("logreg", ClassifierOptions(C=1.0, standardize=True)), X, y)
    assert round((chosen - old_default) * len(y)) >= 4  # at least 4 more of the 80 rows right (5%)


def test_the_path_stops_one_step_past_the_lowest_log_loss():
    from embedkit.classify import LOGREG_SEARCH_PATIENCE, search_logreg

    X, y = _overfitting_set()
    search = search_logreg(X, y, ClassifierOptions(), seed=0)
    for losses in search["cv_log_loss"].values():
        walked = [loss for loss in losses if loss is not None]
        lowest = int(np.argmin(walked))
        # Past its minimum (and once it has fallen below its start) a path goes LOGREG_SEARCH_PATIENCE steps on.
        assert len(walked) == len(losses) or len(walked) == lowest + 1 + LOGREG_SEARCH_PATIENCE
        assert all(later >= walked[lowest] for later in walked[lowest + 1 :])


def test_the_search_runs_on_one_thread(monkeypatch):
    from threadpoolctl import threadpool_info

    import embedkit.classify.fit as fit_module

    seen: list[int] = []
    walk = fit_module._path_scores

    def recording(*args, **kwargs):
        seen.extend(pool["num_threads"] for pool in threadpool_info())  # BLAS and OpenMP pools alike
        return walk(*args, **kwargs)

    monkeypatch.setattr(fit_module, "_path_scores", recording)
    X, y = _overfitting_set()
    fit_module.search_logreg(X, y, ClassifierOptions(), seed=0)
    assert seen and set(seen) == {1}


def test_a_search_recorded_before_the_log_loss_still_shows():
    from embedkit.classify import chosen_note

    old = {"search": {"chosen_C": 0.1, "chosen_standardize": True, "folds": 5, "chosen_cv_accuracy": 0.5, "rows": 9}}
    old["search"].update(grid_C=[0.01, 0.1], grid_standardize=[True, False])
    assert chosen_note(old).startswith("C 0.1, standardised: 5-fold CV accuracy 0.5000 on 9 rows")


def test_explicit_c_turns_the_search_off():
    from embedkit.classify import fit_classifier

    X, y = _overfitting_set()
    _, fixed = fit_classifier(X, y, "logreg", ClassifierOptions(C=1.0), seed=0)
    assert fixed is None  # an explicit C: nothing searched
    _, scaled_only = fit_classifier(X, y, "logreg", ClassifierOptions(standardize=True), seed=0)
    assert scaled_only["grid_standardize"] == [True] and set(scaled_only["cv_accuracy"]) == {"scaled"}


def test_train_cli_shows_and_stores_the_chosen_c(features, tmp_path):
    result = run("train", features, "-y", "label", "-o", tmp_path / "m")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    search = metrics["search"]
    assert f"C {search['chosen_C']:g}" in result.output and "-fold CV log-loss" in result.output
    manifest = json.loads((tmp_path / "m" / MANIFEST).read_text())
    assert manifest["search"]["chosen_C"] == search["chosen_C"]
    assert load_model(tmp_path / "m").estimator[-1].C == search["chosen_C"]
    result = run("train", features, "-y", "label", "-o", tmp_path / "fixed", "--C", 0.5)
    assert result.exit_code == 0, result.output
    fixed = json.loads((tmp_path / "fixed" / "metrics.json").read_text())
    assert "search" not in fixed and "CV accuracy" not in result.output
    assert load_model(tmp_path / "fixed").estimator[-1].C == 0.5
