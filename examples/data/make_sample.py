"""Regenerate topics.csv, new_texts.csv and queries.csv: embedkit's own small labelled sample.

The sentences were written for embedkit; each text joins two sentences of one topic, so the sample is
small enough to ship and still labelled well enough to train, cluster and search on.
"""

import csv
import random
from pathlib import Path

SENTENCES = {
    "sports": [
        "The striker scored twice in the second half and the crowd went wild.",
        "Our team lost the final on penalties after extra time.",
        "She ran the marathon in under three hours for the first time.",
        "The coach changed the defence at half time and it worked.",
        "A late goal kept the club out of the relegation zone.",
        "The tennis match lasted five sets and nearly four hours.",
        "He broke the national record in the hundred metres sprint.",
        "The referee showed a red card after a dangerous tackle.",
        "Training starts at six every morning during the season.",
        "The cyclists climbed the mountain stage in heavy rain.",
        "Tickets for the derby sold out within an hour.",
        "The goalkeeper saved a penalty in the last minute.",
        "They won the league with two games still to play.",
        "The swimmer took gold in the relay and silver in the butterfly.",
        "Fans waited outside the stadium to greet the players.",
    ],
    "cooking": [
        "Fry the onions slowly until they turn soft and golden.",
        "Add a pinch of salt to the pasta water before it boils.",
        "The bread needs to rise for an hour in a warm kitchen.",
        "Whisk the eggs with sugar until the mixture is pale.",
        "Roast the vegetables with olive oil, garlic and thyme.",
        "Let the soup simmer gently for twenty minutes.",
        "Season the steak and rest it before slicing.",
        "Fold the flour into the batter without overmixing.",
        "A squeeze of lemon brightens the sauce at the end.",
        "Chop the herbs finely and scatter them over the rice.",
        "The cake is done when a skewer comes out clean.",
        "Marinate the chicken overnight in yoghurt and spices.",
        "Toast the cumin seeds in a dry pan until fragrant.",
        "Stir the risotto often and add the stock a ladle at a time.",
        "Serve the curry with warm flatbread and fresh coriander.",
    ],
    "technology": [
        "The new laptop has a faster processor and a brighter screen.",
        "Update the operating system to fix the security flaw.",
        "The app crashes whenever I upload a large photo.",
        "Our servers moved to the cloud to handle more traffic.",
        "The phone battery now lasts almost two days.",
        "Developers released a patch for the memory leak.",
        "The database query became ten times faster after adding an index.",
        "Back up your files before installing the new version.",
        "The router keeps dropping the wireless connection at night.",
        "A software bug deleted the settings of every user.",
        "The company announced a cheaper tablet with more storage.",
        "Password managers generate long random passwords for each site.",
        "The printer driver does not support the latest system.",
        "Engineers trained the model on thousands of graphics cards.",
        "The website loads slowly because the images are too large.",
    ],
    "finance": [
        "The central bank raised interest rates by a quarter point.",
        "Shares fell sharply after the company missed its earnings forecast.",
        "She pays off her credit card in full every month.",
        "The mortgage rate is fixed for the first five years.",
        "Inflation eased for the third month in a row.",
        "Investors moved money from stocks into government bonds.",
        "The budget leaves little room for unexpected expenses.",
        "A diversified portfolio spreads the risk across many assets.",
        "The bank approved the loan after checking his income.",
        "Currency markets reacted to the election results overnight.",
        "Saving a little every month adds up over the years.",
        "The startup raised new funding from venture capital firms.",
        "Pension contributions reduce the tax you pay today.",
        "The quarterly report showed higher revenue but lower profit.",
        "Oil prices pushed the cost of living higher this year.",
    ],
}

QUERIES = [
    "who won the football match",
    "how long should bread rise",
    "my computer keeps crashing",
    "are interest rates going up",
]


def main() -> None:
    rng = random.Random(0)
    here = Path(__file__).parent
    rows, new_rows = [], []
    for topic, sentences in SENTENCES.items():
        pairs = [(i, j) for i in range(len(sentences)) for j in range(len(sentences)) if i != j]
        rng.shuffle(pairs)
        for n, (i, j) in enumerate(pairs[:44]):
            row = {"text": f"{sentences[i]} {sentences[j]}", "label": topic}
            (new_rows if n >= 40 else rows).append(row)
    rng.shuffle(rows)
    for name, data in (("topics.csv", rows), ("new_texts.csv", new_rows)):
        with (here / name).open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["id", "text", "label"])
            w.writeheader()
            w.writerows({"id": f"{name[0]}{k:03d}", **r} for k, r in enumerate(data))
    with (here / "queries.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows((f"q{k}", q) for k, q in enumerate(QUERIES))


if __name__ == "__main__":
    main()
