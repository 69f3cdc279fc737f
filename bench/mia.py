"""Benchmark: membership inference against the served model, before and after forgetting.

Why: exactness is proven bitwise (tests/test_exactness.py, `s3t verify`); this is the
empirical check a privacy reviewer asks for. A loss-threshold attack (score = minus the
per-sample loss of the served ensemble; for causal LMs also Min-K% token probability, the
mean log-probability of the k% least likely response tokens) tries to tell training samples
from never-seen held-out ones. ROC AUC with bootstrap intervals for:

- retained vs held-out: the attack's power on a model that fits its data (positive control);
- forgotten vs held-out: should be at chance (0.5 inside the interval) once forgotten;
- the same forgotten samples attacked on the model *before* their deletion (they were
  members then: the positive control for exactly those samples).

Protocol, per setting (MiniLM on WordNet noun glosses; SmolLM2-135M-Instruct on WordNet
instructions): fit S3T (m=2, L=2, B=2) on the training part; attack; then a handful of
deletions confined to one cell per shard, one request each and no retraining: attack the
routes still served; then forget a few hundred random training samples (every cell is hit),
retrain, attack again. The held-out part is never trained on.

Sized for 2 shared cores: see the size dicts; more epochs than elsewhere, so that the model
fits its training data and the attack has something to find.

    python -m bench mia [--quick] [--seeds 0] [--only minilm|smollm2]
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from bench import harness

NAME = "mia"
BOOTSTRAP = 2000
SMOKE_BOOTSTRAP = 50  # the smoke size checks the code path: a few resamples are enough
MIN_K = 0.2  # Min-K%: the 20% least likely response tokens
QUICK = {
    "minilm": {"train": 240, "heldout": 80, "forget": 60, "handful": 6, "members": 80,
               "epochs": 4, "learning_rate": 5e-3, "max_seq_len": 48, "layers_per_slice": 1},
    "smollm2": {"train": 32, "heldout": 16, "forget": 8, "handful": 2, "members": 16,
                "epochs": 2, "learning_rate": 2e-3, "max_seq_len": 64, "layers_per_slice": 1},
}
FULL = {
    "minilm": {"train": 800, "heldout": 300, "forget": 200, "handful": 25, "members": 300,
               "epochs": 8, "learning_rate": 5e-3, "max_seq_len": 48, "layers_per_slice": 1},
    "smollm2": {"train": 160, "heldout": 80, "forget": 40, "handful": 8, "members": 80,
                "epochs": 8, "learning_rate": 3e-3, "max_seq_len": 64, "layers_per_slice": 2},
}
SMOKE = {
    "minilm": dict(QUICK["minilm"], train=24, heldout=12, forget=6, handful=2, members=12,
                   epochs=1),
    "smollm2": dict(QUICK["smollm2"], train=8, heldout=4, forget=2, handful=2, members=4,
                    epochs=1),
}
GRID = {"shards": 2, "slices": 2, "budget": 2}


# --------------------------------------------------------------------------- statistics


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC AUC of scores ``pos`` (members) against ``neg`` (non-members): the probability that
    a random member scores above a random non-member, ties counting one half (Mann-Whitney)."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg]))
    n1, n0 = len(pos), len(neg)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def auc_with_interval(pos: np.ndarray, neg: np.ndarray, seed: int,
                      resamples: int | None = None) -> dict[str, Any]:
    """AUC and its 95% percentile-bootstrap interval (both groups resampled). Samples without
    a score (a causal LM sample whose response was cut away entirely) are left out."""
    pos, neg = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
    rng = np.random.default_rng(seed)
    resamples = resamples or bootstrap_resamples()
    boots = [auc(pos[rng.integers(0, len(pos), len(pos))], neg[rng.integers(0, len(neg), len(neg))])
             for _ in range(resamples)]
    low, high = np.percentile(boots, [2.5, 97.5])
    return {"auc": auc(pos, neg), "low": float(low), "high": float(high),
            "n_members": len(pos), "n_heldout": len(neg),
            "chance_inside": bool(low <= 0.5 <= high)}


def bootstrap_resamples() -> int:
    return SMOKE_BOOTSTRAP if harness.smoke_active() else BOOTSTRAP


# --------------------------------------------------------------------------- scores


def classifier_scores(est: Any, data: Any, ids: list[str]) -> dict[str, np.ndarray]:
    """Minus the served ensemble's cross-entropy on each sample's true label."""
    index = {sid: i for i, sid in enumerate(data.ids)}
    rows = [index[sid] for sid in ids]
    probs = est.predict([data.texts[i] for i in rows]).probabilities
    truth = np.asarray([data.labels[i] for i in rows])
    picked = probs[np.arange(len(rows)), truth]
    return {"loss": np.log(np.maximum(picked, 1e-300))}


def lm_scores(est: Any, data: Any, ids: list[str], batch_size: int = 8) -> dict[str, np.ndarray]:
    """Per sample: minus the mean token loss of the served mixture of routes, and Min-K%
    (mean log-probability of the ``MIN_K`` least likely response tokens)."""
    import torch

    est.served()  # refresh the routes from the ledger
    ensemble = est._serving().ensemble  # per-token log-probs: no public per-sample API
    index = {sid: i for i, sid in enumerate(data.ids)}
    texts = [data.texts[index[sid]] for sid in ids]
    loss, min_k = [], []
    for start in range(0, len(texts), batch_size):
        batch = est.backbone.encode(texts[start:start + batch_size])
        per_route = ensemble.token_log_probs(batch)
        stacked = torch.stack(list(per_route.values()))
        mixed = (torch.logsumexp(stacked, dim=0) - np.log(len(per_route))).numpy()
        counts = (batch["labels"][:, 1:] != -100).sum(dim=1).tolist()
        offset = 0
        for n in counts:
            tokens = np.sort(mixed[offset:offset + n])
            offset += n
            loss.append(float(tokens.mean()) if n else float("nan"))
            min_k.append(float(tokens[:max(1, int(round(MIN_K * n)))].mean()) if n else float("nan"))
    return {"loss": np.asarray(loss), "min_k": np.asarray(min_k)}


# --------------------------------------------------------------------------- protocol


def settings(name: str, seed: int, size: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(config, train, heldout) of one setting."""
    from s3t.config import S3TConfig
    from s3t.data.loaders import train_test_split
    from s3t.data.wordnet import load_wordnet, load_wordnet_instructions

    kw = {**GRID, "epochs": size["epochs"], "seed": seed, "learning_rate": size["learning_rate"],
          "max_seq_len": size["max_seq_len"], "layers_per_slice": size["layers_per_slice"]}
    if name == "minilm":
        data = load_wordnet(limit=size["train"] + size["heldout"], seed=seed)
        config = S3TConfig(model=harness.backbone(), batch_size=32, **kw)
    else:

        data = load_wordnet_instructions(limit=size["train"] + size["heldout"], seed=seed)
        config = S3TConfig(model=harness.backbone("llm"), batch_size=8, **kw)
    train, heldout = train_test_split(data, size["heldout"], seed=seed)
    return config, train, heldout


def run_setting(name: str, seed: int, size: dict[str, Any]) -> dict[str, Any]:
    """Fit, attack; a handful of deletions (no retrain), attack; forget many, retrain, attack."""
    import time

    from s3t.data.samples import Dataset
    from s3t.engine import S3T

    config, train, heldout = settings(name, seed, size)
    both = Dataset(ids=train.ids + heldout.ids, texts=train.texts + heldout.texts,
                   labels=(train.labels or []) + (heldout.labels or []),
                   label_names=train.label_names)
    scores = classifier_scores if name == "minilm" else lm_scores
    rng = random.Random(seed)
    t0 = time.perf_counter()
    est = S3T(config, run_dir=harness.tmp_run_dir(f"mia-{name}")).fit(train, progress=False)
    train_seconds = time.perf_counter() - t0

    # a handful of deletions confined to one cell per shard (so every shard keeps a route)
    hit_cells = {(shard, shard % config.slices) for shard in range(config.shards)}
    handful = []
    for cell in sorted(hit_cells):
        handful += rng.sample([row[0] for row in est.ledger.cell_samples(*cell)], size["handful"])
    rest = [sid for sid in train.ids if sid not in set(handful)]
    forget = rng.sample(rest, size["forget"])
    retained = [sid for sid in rest if sid not in set(forget)]
    members = rng.sample(retained, min(size["members"], len(retained)))
    groups = {"retained": members, "forgotten": forget, "handful": handful}
    where = {sid: (shard, slice_) for sid, (shard, slice_, _) in est.ledger.find_samples(retained).items()}
    # negative control after the handful: retained samples of the hit cells, which the routes
    # still served never saw either (same status as the handful, never deleted)
    unserved = [sid for sid in retained if where[sid] in hit_cells]
    groups["unserved"] = rng.sample(unserved, min(size["members"], len(unserved)))

    def attack(stage: str, which: list[str]) -> dict[str, Any]:
        held = scores(est, both, heldout.ids)
        out: dict[str, Any] = {"live_shards": est.status()["live_shards"],
                               "capacity": est.status()["capacity"]}
        for group in which:
            got = scores(est, both, groups[group])
            out[group] = {kind: auc_with_interval(got[kind], held[kind], seed)
                          for kind in got}
        print(f"  {name} seed {seed} {stage:<28} " + "  ".join(
            f"{g}: {kind} {r['auc']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"
            for g in which for kind, r in out[g].items()), flush=True)
        return out

    result: dict[str, Any] = {"seed": seed, "train_seconds": train_seconds,
                              "n": {k: len(v) for k, v in groups.items()} | {
                                  "train": len(train), "heldout": len(heldout)}}
    result["before"] = attack("before deletions", ["retained", "forgotten", "handful"])
    for sid in handful:
        est.forget([sid])
    served_cells = {(int(shard), s) for shard, route in est.status()["routes"].items()
                    if route is not None for s in route["prefix"]}
    assert not served_cells & hit_cells, "a served route still holds a cell the handful hit"
    # positive control after the handful: retained members of the routes still served
    groups["served_members"] = [sid for sid in members if where[sid] in served_cells]
    result["after_handful"] = attack("after handful, no retrain",
                                     ["served_members", "unserved", "handful"])
    certificate = est.forget(forget)
    t0 = time.perf_counter()
    est.retrain(progress=False)
    result["retrain_seconds"] = time.perf_counter() - t0
    result["cells_hit_by_forget"] = len(certificate["cells"])
    groups["forgotten_all"] = forget + handful
    result["after_retrain"] = attack("after forget + retrain", ["retained", "forgotten",
                                                               "forgotten_all"])
    result["audit_ok"] = est.audit().ok
    est.close()
    return result


def plot(results: dict[str, list[dict[str, Any]]], quick: bool) -> None:
    plt = harness.pyplot()
    rows = [(setting, stage, group, kind)
            for setting, runs in results.items()
            for stage, groups in (("before", ("retained", "forgotten")),
                                  ("after_handful", ("served_members", "unserved", "handful")),
                                  ("after_retrain", ("retained", "forgotten_all")))
            for group in groups for kind in runs[0][stage][group]]
    fig, ax = plt.subplots(figsize=(9, 0.4 * len(rows) + 1.2))
    for y, (setting, stage, group, kind) in enumerate(rows):
        for i, run in enumerate(results[setting]):  # seeds side by side
            r = run[stage][group][kind]
            colour = ("tab:red" if group.startswith(("forgotten", "handful"))
                      else "tab:grey" if group == "unserved" else "tab:blue")
            ax.errorbar(r["auc"], y + 0.2 * i, xerr=[[r["auc"] - r["low"]], [r["high"] - r["auc"]]],
                        fmt="os^"[i % 3], color=colour, capsize=3, markersize=4)
    ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{s}: {st.replace('_', ' ')}: {g} ({k})" for s, st, g, k in rows],
                       fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ROC AUC vs never-seen held-out samples (95% bootstrap interval; "
                  "one marker per seed)")
    ax.set_title("Loss-threshold membership inference on the served model")
    harness.save_plot(fig, NAME, quick)


def main(argv: list[str] | None = None) -> int:
    p = harness.parser(__doc__.splitlines()[0])
    p.add_argument("--only", choices=["minilm", "smollm2"], default=None)
    args = p.parse_args(argv)
    size = harness.size_for(args, QUICK, FULL, SMOKE)
    names = [args.only] if args.only else list(size)
    seeds = harness.seeds_for(args, [0], [0, 1])
    prov = harness.provenance(NAME, args.quick, seeds, {**{n: size[n] for n in names}, **GRID,
                                                       "bootstrap": bootstrap_resamples(), "min_k": MIN_K})
    harness.print_header(prov)
    results: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        for seed in seeds:
            results.setdefault(name, []).append(run_setting(name, seed, size[name]))
    harness.write_result(NAME, args.quick, prov, {"results": results})
    plot(results, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
