"""WordNet 3.0 noun glosses as a real text classification task (26 lexicographer
categories), and as instruction data for causal LMs. Reads the Debian ``wordnet-base``
database; ids are ``wn:<synset offset>`` so deletion requests can name a synset.
"""

from __future__ import annotations

from pathlib import Path

from s3t.data.instructions import instruction_text
from s3t.data.samples import Dataset
from s3t.data.subset import limit_indices

DEFAULT_WORDNET = Path("/usr/share/wordnet")

#: WordNet 3.0 lexicographer files, indexed by ``lex_filenum`` (used when no ``lexnames`` file).
LEXNAMES: tuple[str, ...] = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather",
    "adj.ppl",
)  # fmt: skip



def _wordnet_dir(path: str | Path | None) -> Path:
    """Find the directory holding ``data.noun``: the path itself or its ``dict/`` child."""
    base = DEFAULT_WORDNET if path is None else Path(path)
    if base.is_file() and base.name == "data.noun":
        return base.parent
    for cand in (base, base / "dict"):
        if (cand / "data.noun").is_file():
            return cand
    raise FileNotFoundError(
        f"WordNet data.noun not found in {base} (nor in {base / 'dict'}): install it with "
        "`apt-get install wordnet-base` (Debian/Ubuntu) or pass the path of a WordNet "
        "dict directory"
    )


def _lexnames(wn_dir: Path) -> dict[int, str]:
    """Read ``lexnames`` if the dictionary ships one, else use the standard WordNet 3.0 list."""
    f = wn_dir / "lexnames"
    if f.is_file():
        names: dict[int, str] = {}
        for line in f.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].isdigit():
                names[int(parts[0])] = parts[1]
        if names:
            return names
    return dict(enumerate(LEXNAMES))


def _gloss_definition(gloss: str) -> str:
    """Keep a gloss's definition, dropping the quoted example sentences that follow ``; "``."""
    gloss = gloss.strip()
    definition = gloss.split('; "', 1)[0].strip().rstrip(";").strip()
    return definition or gloss


def _parse_data_noun(file: Path, lexnames: dict[int, str]) -> list[tuple[str, str, str]]:
    """Parse ``data.noun`` into ``(id, text, lexname)`` triples, in file (offset) order."""
    out: list[tuple[str, str, str]] = []
    with file.open(encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.startswith("  ") or not line.strip():
                continue  # license header
            head, bar, gloss = line.partition("|")
            parts = head.split()
            if not bar or len(parts) < 5 or not parts[0].isdigit() or not parts[1].isdigit():
                raise ValueError(
                    f"{file}:{lineno}: not a WordNet data line (expected "
                    "'offset lex_filenum ss_type w_cnt word ... | gloss'); is this data.noun?"
                )
            offset, lex_filenum, ss_type = parts[0], int(parts[1]), parts[2]
            if ss_type != "n":
                continue
            if lex_filenum not in lexnames:
                raise ValueError(f"{file}:{lineno}: unknown lex_filenum {lex_filenum}")
            lemma = parts[4].replace("_", " ")
            text = f"{lemma}: {_gloss_definition(gloss)}"
            out.append((f"wn:{int(offset):08d}", text, lexnames[lex_filenum]))
    return out


def load_wordnet(
    path: str | Path | None = None, limit: int | None = None, seed: int = 0
) -> Dataset:
    """WordNet noun synsets labelled by lexicographer file (``noun.animal``, ...).

    One sample per synset: id ``wn:<offset>``, text ``"<first lemma>: <definition>"``.
    ``label_names`` are all categories occurring in the whole file, so every ``limit``/``seed``
    shares one label space. ``limit`` keeps a seeded, class-proportional subset, sorted by id.
    """
    wn_dir = _wordnet_dir(path)
    rows = _parse_data_noun(wn_dir / "data.noun", _lexnames(wn_dir))
    label_names = sorted({lab for _, _, lab in rows})
    index = {name: i for i, name in enumerate(label_names)}
    data = Dataset(
        ids=[r[0] for r in rows],
        texts=[r[1] for r in rows],
        labels=[index[r[2]] for r in rows],
        label_names=label_names,
    )
    if limit is not None:
        data = data.subset(limit_indices(data, limit, seed))
    return data


def load_wordnet_instructions(
    path: str | Path | None = None, limit: int | None = None, seed: int = 0
) -> Dataset:
    """WordNet noun glosses as instructions: "What does the word X mean?" -> the gloss.

    One sample per synset, id ``wn-instruct:<offset>``; ``limit`` keeps the same seeded,
    category-proportional subset as :func:`load_wordnet`.
    """
    source = load_wordnet(path, limit=limit, seed=seed)
    texts = []
    for text in source.texts:
        lemma, _, gloss = text.partition(": ")
        texts.append(instruction_text(f"What does the word {lemma} mean?", gloss))
    ids = ["wn-instruct:" + sid.removeprefix("wn:") for sid in source.ids]
    return Dataset(ids=ids, texts=texts, labels=[0] * len(ids))
