"""Loaders: WordNet parsing (real and fixture), CSV/JSONL tables, load_source, splitting."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from s3t.data.loaders import load_source, load_table, load_wordnet, train_test_split
from s3t.data.samples import Dataset

REAL_WORDNET = Path("/usr/share/wordnet")
needs_wordnet = pytest.mark.skipif(
    not (REAL_WORDNET / "data.noun").is_file(), reason="wordnet-base not installed"
)


@pytest.fixture(scope="module")
def wordnet() -> Dataset:
    return load_wordnet()


# --------------------------------------------------------------------------- real WordNet


@needs_wordnet
def test_real_wordnet_counts(wordnet: Dataset) -> None:
    # WordNet 3.0 has 82,115 noun synsets over 26 noun lexicographer files (03..28).
    assert len(wordnet) == 82115
    assert len(wordnet.label_names) == 26
    assert wordnet.label_names == sorted(wordnet.label_names)
    assert wordnet.label_names[0] == "noun.Tops"
    assert all(name.startswith("noun.") for name in wordnet.label_names)
    counts = Counter(wordnet.label_names[lab] for lab in wordnet.labels)
    assert counts["noun.Tops"] == 51
    assert counts["noun.artifact"] == 11587
    assert wordnet.groups == [None] * len(wordnet)
    assert all(sid.startswith("wn:") and len(sid) == 11 for sid in wordnet.ids)


@needs_wordnet
def test_real_wordnet_known_synset(wordnet: Dataset) -> None:
    i = wordnet.ids.index("wn:02084071")
    assert wordnet.label_names[wordnet.labels[i]] == "noun.animal"
    text = wordnet.texts[i]
    assert text.startswith("dog: a member of the genus Canis")
    assert text.endswith("occurs in many breeds")
    assert '"' not in text  # the example sentence is dropped
    j = wordnet.ids.index("wn:00001740")
    assert wordnet.texts[j].startswith("entity: that which is perceived")
    assert wordnet.label_names[wordnet.labels[j]] == "noun.Tops"


@needs_wordnet
def test_real_wordnet_limit_is_deterministic(wordnet: Dataset) -> None:
    a = load_wordnet(limit=500, seed=3)
    b = load_wordnet(limit=500, seed=3)
    c = load_wordnet(limit=500, seed=4)
    assert len(a) == 500
    assert a.ids == b.ids and a.texts == b.texts and a.labels == b.labels
    assert a.ids != c.ids
    assert a.ids == sorted(a.ids)
    assert a.label_names == wordnet.label_names  # one label space whatever the limit
    full = dict(zip(wordnet.ids, wordnet.labels, strict=True))
    assert all(full[sid] == lab for sid, lab in zip(a.ids, a.labels, strict=True))
    # class-proportional: the biggest class gets its share within one sample
    share = Counter(wordnet.labels)
    got = Counter(a.labels)
    for lab, n in share.items():
        assert abs(got[lab] - 500 * n / len(wordnet)) < 1


# --------------------------------------------------------------------------- fixture WordNet

LICENSE = "  1 This software and database is being provided to you\n  2 \n"
FIXTURE_LINES = [
    "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived  \n",
    "02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 001 @ 02083346 n 0000 "
    '| a domesticated canid; occurs in many breeds; "the dog barked all night"  \n',
    "03000000 06 n 01 hot_air_balloon 0 000 | a balloon lifted by hot air;  \n",
    '04000000 05 n 01 Felis_catus 0 000 | a cat; "a cat"; "another"  \n',
]


def write_dict(root: Path, lines: list[str], lexnames: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.noun").write_text(LICENSE + "".join(lines), encoding="utf-8")
    if lexnames is not None:
        (root / "lexnames").write_text(lexnames, encoding="utf-8")
    return root


def test_fixture_wordnet_parsing(tmp_path: Path) -> None:
    d = load_wordnet(write_dict(tmp_path, FIXTURE_LINES))
    assert d.ids == ["wn:00001740", "wn:02084071", "wn:03000000", "wn:04000000"]
    assert d.texts == [
        "entity: that which is perceived",
        "dog: a domesticated canid; occurs in many breeds",
        "hot air balloon: a balloon lifted by hot air",
        "Felis catus: a cat",
    ]
    assert d.label_names == ["noun.Tops", "noun.animal", "noun.artifact"]
    assert d.labels == [0, 1, 2, 1]
    assert d.groups == [None] * 4


def test_fixture_wordnet_accepts_parent_and_file_paths(tmp_path: Path) -> None:
    write_dict(tmp_path / "dict", FIXTURE_LINES)
    assert len(load_wordnet(tmp_path)) == 4
    assert len(load_wordnet(tmp_path / "dict" / "data.noun")) == 4
    assert len(load_source(f"wordnet:{tmp_path}")) == 4


def test_fixture_wordnet_reads_lexnames_file(tmp_path: Path) -> None:
    lex = "03\tnoun.Top\t1\n05\tnoun.beast\t1\n06\tnoun.thing\t1\n"
    d = load_wordnet(write_dict(tmp_path, FIXTURE_LINES, lexnames=lex))
    assert d.label_names == ["noun.Top", "noun.beast", "noun.thing"]


def test_fixture_wordnet_malformed_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data.noun:4: not a WordNet data line"):
        load_wordnet(write_dict(tmp_path, FIXTURE_LINES[:1] + ["garbage here\n"]))


def test_fixture_wordnet_limit(tmp_path: Path) -> None:
    root = write_dict(tmp_path, FIXTURE_LINES)
    assert load_wordnet(root, limit=2, seed=1).ids == load_wordnet(root, limit=2, seed=1).ids
    assert len(load_wordnet(root, limit=2)) == 2
    assert len(load_wordnet(root, limit=100)) == 4
    with pytest.raises(ValueError, match="limit"):
        load_wordnet(root, limit=0)


def test_missing_wordnet_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install wordnet-base"):
        load_wordnet(tmp_path / "nowhere")


# --------------------------------------------------------------------------- CSV / JSONL

ROWS = [
    {"id": 1, "text": "hello, world", "label": "pos", "group": "u1"},
    {"id": "b", "text": "bad day", "label": "neg", "group": "u1"},
    {"id": "c", "text": 'a "quoted" text', "label": "pos", "group": ""},
    {"id": "d", "text": "meh", "label": "neutral", "group": "u2"},
]


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def check_rows(d: Dataset) -> None:
    assert d.ids == ["1", "b", "c", "d"]
    assert d.texts == ["hello, world", "bad day", 'a "quoted" text', "meh"]
    assert d.label_names == ["neg", "neutral", "pos"]
    assert d.labels == [2, 0, 2, 1]
    assert d.groups == ["u1", "u1", None, "u2"]


def test_csv_round_trip(tmp_path: Path) -> None:
    import csv

    path = tmp_path / "train.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["id", "text", "label", "group", "extra"])
        w.writeheader()
        for r in ROWS:
            w.writerow({**r, "extra": "ignored"})
    check_rows(load_table(path))


def test_jsonl_round_trip(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", ROWS)
    check_rows(load_table(path))
    check_rows(load_source(str(path)))
    # .json holding JSON lines is accepted too, and blank lines are skipped
    alt = tmp_path / "train.json"
    alt.write_text(path.read_text() + "\n\n", encoding="utf-8")
    check_rows(load_table(alt))


def test_integer_labels_sort_numerically(tmp_path: Path) -> None:
    rows = [{"id": i, "text": f"t{i}", "label": lab} for i, lab in enumerate([10, 2, 0, 2])]
    d = load_table(write_jsonl(tmp_path / "ints.jsonl", rows))
    assert d.label_names == ["0", "2", "10"]
    assert d.labels == [2, 1, 0, 1]
    # CSV labels are strings "10", "2": the same label space results
    p = write_csv(tmp_path / "ints.csv", "id,text,label", ["0,a,10", "1,b,2", "2,c,0"])
    assert load_table(p).label_names == ["0", "2", "10"]


def test_eval_file_uses_training_label_space(tmp_path: Path) -> None:
    train = load_table(write_jsonl(tmp_path / "train.jsonl", ROWS))
    ev = write_csv(tmp_path / "eval.csv", "id,text,label", ["e1,great,pos", "e2,awful,neg"])
    d = load_table(ev, label_names=train.label_names)
    assert d.label_names == ["neg", "neutral", "pos"]
    assert d.labels == [2, 0]
    bad = write_csv(tmp_path / "bad.csv", "id,text,label", ["e1,great,pos", "e2,odd,weird"])
    with pytest.raises(ValueError, match=r"bad\.csv, line 3: unknown label 'weird'"):
        load_table(bad, label_names=train.label_names)


def test_unlabelled_file_for_prediction(tmp_path: Path) -> None:
    p = write_csv(tmp_path / "pred.csv", "id,text", ["x,some text", "y,more text"])
    d = load_table(p)
    assert d.labels is None and d.ids == ["x", "y"] and d.label_names == []
    d2 = load_table(p, label_names=["a", "b"])
    assert d2.labels is None and d2.label_names == ["a", "b"]
    rows = [{"id": "x", "text": "t"}, {"id": "y", "text": "u", "group": "g"}]
    d3 = load_table(write_jsonl(tmp_path / "pred.jsonl", rows))
    assert d3.labels is None and d3.groups == [None, "g"]


@pytest.mark.parametrize(
    ("name", "content", "pattern"),
    [
        ("a.csv", "text,label\nhi,x\n", r"a\.csv, line 1: missing `id` column"),
        ("a.csv", "id,label\n1,x\n", r"a\.csv, line 1: missing `text` column"),
        ("a.csv", "id,text,label\n1,hi,x\n2,  ,x\n", r"a\.csv, line 3: empty text"),
        ("a.csv", "id,text\n1,hi\n2,yo\n1,again\n", r"line 4: duplicate id '1' .*line 2"),
        ("a.csv", "", r"a\.csv is empty"),
        ("a.csv", "id,text,label\n", r"a\.csv is empty"),
        ("a.csv", "id,text,label\n1,hi,\n", r"line 2: empty label"),
        ("a.csv", "id,text\n,hi\n", r"line 2: empty id"),
        ("a.jsonl", '{"id": 1, "text": "a"}\n{"id": 2, "text": \n', r"line 2: malformed JSON"),
        ("a.jsonl", '{"id": 1, "text": "a"}\n{"text": "b"}\n', r"line 2: missing `id`"),
        ("a.jsonl", '{"id": 1}\n', r"a\.jsonl, line 1: missing `text`"),
        ("a.jsonl", '{"id": 1, "text": ""}\n', r"line 1: empty text"),
        ("a.jsonl", '{"id": 1, "text": "a"}\n\n{"id": 1, "text": "b"}\n', r"line 3: duplicate"),
        ("a.jsonl", "", r"a\.jsonl is empty"),
        ("a.jsonl", '{"id": 1, "text": "a"}\n[1, 2]\n', r"line 2: expected a JSON object"),
        ("a.json", '[{"id": 1, "text": "a"}]\n', r"JSON array; write JSON lines"),
        ("a.jsonl", '{"id": 1, "text": "a", "label": 1.5}\n', r"line 1: label must be"),
        (
            "a.jsonl",
            '{"id": 1, "text": "a", "label": "x"}\n{"id": 2, "text": "b"}\n',
            r"line 2: `label` is missing here",
        ),
        ("a.txt", "id,text\n1,a\n", r"unsupported extension '\.txt'"),
    ],
)
def test_table_errors(tmp_path: Path, name: str, content: str, pattern: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=pattern):
        load_table(path)


def test_missing_table_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_table(tmp_path / "absent.csv")


# --------------------------------------------------------------------------- load_source


def test_load_source_limit_and_label_space(tmp_path: Path) -> None:
    rows = [{"id": f"s{i:02d}", "text": f"t{i}", "label": "ab"[i % 2]} for i in range(20)]
    path = str(write_jsonl(tmp_path / "d.jsonl", rows))
    a = load_source(path, limit=6, seed=1)
    assert len(a) == 6 and a.ids == sorted(a.ids)
    assert a.ids == load_source(path, limit=6, seed=1).ids
    assert Counter(a.labels) == {0: 3, 1: 3}
    b = load_source(path, label_names=["b", "a", "c"])
    assert b.label_names == ["b", "a", "c"] and b.labels[:2] == [1, 0]


def test_load_source_wordnet_remaps_label_names(tmp_path: Path) -> None:
    root = write_dict(tmp_path, FIXTURE_LINES)
    names = ["noun.artifact", "noun.animal", "noun.Tops", "noun.extra"]
    d = load_source(f"wordnet:{root}", label_names=names)
    assert d.label_names == names
    assert d.labels == [2, 1, 0, 1]
    with pytest.raises(ValueError, match="not in the given label_names"):
        load_source(f"wordnet:{root}", label_names=["noun.animal"])


# --------------------------------------------------------------------------- split


def make_data(n: int, groups: list[str | None] | None = None) -> Dataset:
    return Dataset(
        ids=[f"s{i}" for i in range(n)],
        texts=[f"text {i}" for i in range(n)],
        labels=[i % 3 for i in range(n)],
        groups=groups or [],
        label_names=["a", "b", "c"],
    )


def test_split_sizes_and_determinism() -> None:
    data = make_data(100)
    train, test = train_test_split(data, 0.2, seed=5)
    assert len(test) == 20 and len(train) == 80
    assert set(train.ids).isdisjoint(test.ids)
    assert set(train.ids) | set(test.ids) == set(data.ids)
    again = train_test_split(data, 0.2, seed=5)
    assert again[1].ids == test.ids
    assert train_test_split(data, 0.2, seed=6)[1].ids != test.ids
    assert len(train_test_split(data, 7)[1]) == 7
    assert train.label_names == data.label_names
    # labels travel with their samples
    assert all(lab == int(sid[1:]) % 3 for sid, lab in zip(test.ids, test.labels, strict=True))


def test_split_never_splits_groups() -> None:
    groups = [f"g{i % 7}" if i % 3 else None for i in range(90)]
    data = make_data(90, groups)
    for seed in range(10):
        train, test = train_test_split(data, 0.3, seed=seed)
        train_groups = {g for g in train.groups if g is not None}
        test_groups = {g for g in test.groups if g is not None}
        assert train_groups.isdisjoint(test_groups)
        assert len(train) + len(test) == 90
        assert abs(len(test) - 27) <= 10  # whole groups of ~9 samples: close to the target


@pytest.mark.parametrize("bad", [0, 10, 12, 0.0, 1.0, -0.5, True, "3"])
def test_split_rejects_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError):
        train_test_split(make_data(10), bad)  # type: ignore[arg-type]


def test_split_impossible_with_one_group() -> None:
    with pytest.raises(ValueError, match="without splitting a group"):
        train_test_split(make_data(10, ["g"] * 10), 0.5)
