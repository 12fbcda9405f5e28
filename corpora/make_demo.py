"""Write the bundled demo corpus: short English and Japanese sentences from a small grammar.

Every sentence is generated here (no third-party text). The output is deterministic:
``python corpora/make_demo.py`` rewrites corpora/demo/{train,valid,test}.txt byte for byte.
"""

from __future__ import annotations

import random
from pathlib import Path

SEED = 20261122
SIZES = {"train": 6000, "valid": 500, "test": 500}

# each entry: (English, Japanese)
PEOPLE = [("Tom", "トム"), ("Mary", "メアリー"), ("Ken", "健"), ("Yuki", "由紀"), ("Anna", "アンナ"),
          ("Sam", "サム"), ("Hana", "花"), ("Taro", "太郎")]
SLOTS = {
    "place": [("park", "公園"), ("library", "図書館"), ("station", "駅"), ("school", "学校"), ("market", "市場"),
              ("garden", "庭"), ("kitchen", "台所"), ("river", "川")],
    "food": [("apples", "りんご"), ("bread", "パン"), ("fish", "魚"), ("rice", "ご飯"), ("soup", "スープ"),
             ("cake", "ケーキ"), ("noodles", "麺"), ("tea", "お茶")],
    "animal": [("cat", "猫"), ("dog", "犬"), ("bird", "鳥"), ("horse", "馬"), ("rabbit", "うさぎ")],
    "adjective": [("small", "小さい"), ("big", "大きい"), ("quiet", "静かな"), ("happy", "元気な"), ("old", "古い")],
    "action": [("sleeps", "寝て"), ("runs", "走って"), ("plays", "遊んで"), ("waits", "待って")],
    "day": [("Monday", "月曜日"), ("Friday", "金曜日"), ("Sunday", "日曜日"), ("morning", "朝"), ("evening", "夕方")],
    "thing": [("book", "本"), ("letter", "手紙"), ("key", "鍵"), ("umbrella", "傘"), ("map", "地図")],
}
TEMPLATES = (
    [
        "{a} ate {food} at the {place} .",
        "On {day} , {a} and {b} went to the {place} .",
        "The {adjective} {animal} {action} in the {place} .",
        "{a} likes {food} , but {b} does not .",
        "{a} gave the {thing} to {b} .",
        "Where did {a} put the {thing} ?",
        "{a} came into the {place} . {a} said hi to {b} .",
        "{a} found {article} {adjective} {thing} near the {place} .",
    ],
    [
        "{a}は{place}で{food}を食べました。",
        "{day}に{a}と{b}は{place}へ行きました。",
        "{adjective}{animal}が{place}で{action}います。",
        "{a}は{food}が好きですが、{b}は好きではありません。",
        "{a}は{b}に{thing}をあげました。",
        "{a}は{thing}をどこに置きましたか？",
        "{a}は{place}に入って、{b}にこんにちはと言いました。",
        "{a}は{place}の近くで{adjective}{thing}を見つけました。",
    ],
)


def sentence(rng: random.Random, language: int) -> str:
    """One sentence; language 0 is English, 1 is Japanese."""
    a, b = (person[language] for person in rng.sample(PEOPLE, 2))
    words = {slot: rng.choice(options)[language] for slot, options in SLOTS.items()}
    words["article"] = "an" if words["adjective"][0] in "aeiou" else "a"  # an old key; drawn from nothing random
    return rng.choice(TEMPLATES[language]).format(a=a, b=b, **words)


def main() -> None:
    rng = random.Random(SEED)
    out = Path(__file__).resolve().parent / "demo"
    out.mkdir(exist_ok=True)
    for split, count in SIZES.items():
        lines = [sentence(rng, language=int(rng.random() < 0.5)) for _ in range(count)]
        (out / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
