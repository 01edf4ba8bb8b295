"""The memorization / generalization study end to end: labels, token level, per-label
metrics, MSP bins and the MSP-weighted hybrid, written as report.md + analysis.png + results.json.

`run_analysis` is the entry point behind `sidmlp analyze`: it loads a prepared dataset,
trains (or reloads from out_dir/sasrec) the SASRec baseline and calls `analyze` with its
top-50 lists plus any GR top-50 lists passed in (teacher, SID-MLP student, ...).

GR rankings format: {model name: {"test": (items, scores), "valid": (items, scores)}},
items a LongTensor (N, K) of item ids (-1 = padding), scores a FloatTensor (N, K) of beam
log-probabilities (-inf = padding), rows aligned with the split's users. "valid" is
optional; without it the hybrid for that model is skipped (its weights are tuned on valid).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..io import provenance, write_json
from .hybrid import adaptive_alpha, fuse_rankings, grid_search_adaptive, grid_search_fixed
from .labels import GENERALIZATION_TYPES, LABELS, InstanceLabels, build_transition_graph, label_instances, label_shares, metrics_by_label
from .token_level import TokenSupport, token_level_table, token_support
from ..errors import InvalidInput

__all__ = ["analyze", "run_analysis", "msp_bins", "check_rankings"]

Ranking = tuple[torch.Tensor, torch.Tensor]


def check_rankings(gr_rankings: Mapping[str, Mapping[str, Ranking]] | None, n_valid: int, n_test: int) -> dict[str, dict[str, Ranking]]:
    """Validate GR rankings {name: {'test': (items, scores), 'valid': ...}} against the split sizes."""
    if gr_rankings is None:
        return {}
    if not isinstance(gr_rankings, Mapping):
        raise InvalidInput("gr_rankings must be a dict {model name: {'valid'|'test': (items, scores)}}")
    out: dict[str, dict[str, Ranking]] = {}
    for name, parts in gr_rankings.items():
        if not isinstance(parts, Mapping) or "test" not in parts or set(parts) - {"valid", "test"}:
            raise InvalidInput(f"gr_rankings[{name!r}] must map 'test' (and optionally 'valid') to (items, scores)")
        out[name] = {}
        for part, pair in parts.items():
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise InvalidInput(f"gr_rankings[{name!r}][{part!r}] must be an (items, scores) pair")
            items, scores = torch.as_tensor(pair[0]), torch.as_tensor(pair[1])
            want = n_valid if part == "valid" else n_test
            if items.dim() != 2 or items.shape[0] != want or scores.shape != items.shape:
                raise InvalidInput(
                    f"gr_rankings[{name!r}][{part!r}] must be items and scores of shape ({want}, K), "
                    f"got {tuple(items.shape)} and {tuple(scores.shape)}"
                )
            if items.dtype.is_floating_point or not scores.dtype.is_floating_point:
                raise InvalidInput(f"gr_rankings[{name!r}][{part!r}]: items must be integer and scores floating point")
            out[name][part] = (items.long(), scores.float())
    return out


def msp_bins(
    msp: torch.Tensor,
    labels: InstanceLabels,
    ndcg: Mapping[str, torch.Tensor],
    num_bins: int = 5,
) -> list[dict[str, Any]]:
    """Equal-count MSP quantile bins: MSP range, size, memorization share and each model's mean NDCG."""
    msp_np = torch.as_tensor(msp).double().numpy()
    n = msp_np.shape[0]
    if n != len(labels):
        raise InvalidInput(f"msp has {n} entries but labels has {len(labels)}")
    if num_bins < 1 or num_bins > max(n, 1):
        raise InvalidInput(f"num_bins must be in [1, {n}], got {num_bins}")
    order = np.argsort(msp_np, kind="stable")
    rows = []
    for b, idx in enumerate(np.array_split(order, num_bins)):
        row: dict[str, Any] = {
            "bin": b,
            "msp_lo": float(msp_np[idx].min()),
            "msp_hi": float(msp_np[idx].max()),
            "n": int(idx.size),
        }
        for lab in LABELS:
            row[f"share_{lab}"] = float((labels.label[idx] == lab).mean())
        for name, values in ndcg.items():
            row[f"ndcg:{name}"] = float(torch.as_tensor(values).double().numpy()[idx].mean())
        rows.append(row)
    return rows


def _by_depth(support: TokenSupport, ndcg: torch.Tensor, recall: torch.Tensor, labels: InstanceLabels, k: int) -> dict[str, dict[str, float]]:
    """Per item-level label and token depth: count and mean NDCG/Recall."""
    out: dict[str, dict[str, float]] = {}
    nd, rc = ndcg.double().numpy(), recall.double().numpy()
    for lab in (*LABELS, "all"):
        base = np.ones(len(labels), dtype=bool) if lab == "all" else labels.label == lab
        for depth in range(support.num_levels + 1):
            m = base & (support.depth == depth)
            if m.any():
                out[f"{lab}/depth{depth}"] = {"n": int(m.sum()), f"ndcg@{k}": float(nd[m].mean()), f"recall@{k}": float(rc[m].mean())}
    return out


def _interval(boot: dict[str, float]) -> list[float]:
    """[mean difference, lo95, hi95] of a paired_bootstrap result."""
    return [boot["mean_difference"], boot["ci_low"], boot["ci_high"]]


def _clean(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars -> Python, NaN -> None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if math.isnan(obj) else float(obj)
    return obj


def _ci(interval: Any) -> str:
    """'+0.0123 [+0.0030, +0.0215]' of a [mean, lo, hi] list; '-' when absent."""
    return "-" if not interval else f"{interval[0]:+.4f} [{interval[1]:+.4f}, {interval[2]:+.4f}]"


def _fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def _plot(results: dict[str, Any], path: Path, k: int) -> None:
    """Two panels: NDCG@k per label and model; NDCG@k and memorization share across MSP bins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["models"])
    groups = ["memorization", "generalization", "uncategorized", "all"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / max(len(models), 1)
    for j, name in enumerate(models):
        vals = [results["models"][name]["by_label"][g][f"ndcg@{k}"] for g in groups]
        vals = [0.0 if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in vals]
        ax1.bar(np.arange(len(groups)) + (j - (len(models) - 1) / 2) * width, vals, width, label=name)
    ax1.set_xticks(np.arange(len(groups)))
    ax1.set_xticklabels([f"{g}\n({results['models'][models[0]]['by_label'][g]['n']})" for g in groups] if models else groups)
    ax1.set_ylabel(f"NDCG@{k} (test)")
    ax1.set_title("Per-label NDCG")
    ax1.legend(fontsize=8)

    bins = results["msp_bins"]
    x = np.arange(len(bins))
    for name in models:
        ax2.plot(x, [b[f"ndcg:{name}"] for b in bins], marker="o", label=name)
    ax2.set_xlabel(f"{results['id_model']} MSP quantile bin (low -> high)")
    ax2.set_ylabel(f"NDCG@{k} (test)")
    ax2.set_xticks(x)
    ax2.set_xticklabels([f"{b['msp_lo']:.2g}-{b['msp_hi']:.2g}" for b in bins], rotation=30, fontsize=7)
    twin = ax2.twinx()
    twin.plot(x, [b["share_memorization"] for b in bins], "k--", marker="s", label="memorization share")
    twin.set_ylabel("memorization share")
    twin.set_ylim(0, 1)
    ax2.set_title("MSP bins: memorization share and NDCG")
    h1, l1 = ax2.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    ax2.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _markdown(results: dict[str, Any], k: int) -> str:
    """The report text."""
    lines = [f"# Memorization vs generalization ({results.get('dataset', 'dataset')})", ""]
    lines += [
        "Labels follow arXiv 2603.19809: memorization = target seen right after the last history "
        "item in training; generalization = substitutability / symmetry / transitivity / "
        "2nd-order symmetry within 4 hops; else uncategorized. Metrics on the test split; "
        "hybrid weights tuned on validation NDCG.",
        "",
        "## Label shares",
        "",
        "| split | n | memorization | generalization | uncategorized | " + " | ".join(GENERALIZATION_TYPES) + " |",
        "|---|---|---|---|---|" + "---|" * len(GENERALIZATION_TYPES),
    ]
    for part, shares in results["labels"].items():
        lines.append(
            f"| {part} | {shares['n']} | " + " | ".join(_fmt(shares[lab]) for lab in LABELS) + " | "
            + " | ".join(_fmt(shares[f"type:{t}"]) for t in GENERALIZATION_TYPES) + " |"
        )
    models = list(results["models"])
    counts = results["models"][models[0]]["by_label"] if models else {}
    groups = ["all", *LABELS, *GENERALIZATION_TYPES]
    hop_keys = [key for key in counts if "/h" in key]
    for title, keys in (
        (f"## NDCG@{k} / Recall@{k} per label (test)", groups),
        (f"## NDCG@{k} / Recall@{k} per generalization type and smallest hop (test)", hop_keys),
    ):
        if not keys:
            continue
        lines += ["", title, "", "| group | n | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
        for g in keys:
            cells = [
                f"{_fmt(results['models'][m]['by_label'][g][f'ndcg@{k}'])} / "
                f"{_fmt(results['models'][m]['by_label'][g][f'recall@{k}'])}"
                for m in models
            ]
            lines.append(f"| {g} | {counts[g]['n']} | " + " | ".join(cells) + " |")

    tl = results["token_level"]
    lines += [
        "",
        "## Token level (test)",
        "",
        "Largest SID prefix length n whose prefix transition (history prefix -> target prefix, "
        "hop <= 4) was seen in training; 0 = none. Rows: item-level label.",
        "",
        "| label | " + " | ".join(f"n={d}" for d in range(tl["levels"] + 1)) + " |",
        "|---|" + "---|" * (tl["levels"] + 1),
    ]
    for lab, row in tl["table"].items():
        lines.append(f"| {lab} | " + " | ".join(str(c) for c in row) + " |")
    lines += ["", "Same, adjacent prefix transitions only (hop 1: strict token-level memorization):", "",
              "| label | " + " | ".join(f"n={d}" for d in range(tl["levels"] + 1)) + " |",
              "|---|" + "---|" * (tl["levels"] + 1)]
    for lab, row in tl["table_hop1"].items():
        lines.append(f"| {lab} | " + " | ".join(str(c) for c in row) + " |")

    depth_keys = sorted({key for m in models for key in results["models"][m]["by_token_depth"]},
                        key=lambda key: (key.split("/")[0] != "all", key))
    if depth_keys:
        lines += ["", f"NDCG@{k} per item-level label and token depth (test):", "",
                  "| label/depth | n | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
        for key in depth_keys:
            by = {m: results["models"][m]["by_token_depth"].get(key) for m in models}
            n_key = next(v["n"] for v in by.values() if v)
            lines.append(f"| {key} | {n_key} | " + " | ".join(_fmt(v[f'ndcg@{k}']) if v else "-" for v in by.values()) + " |")

    lines += ["", f"## {results['id_model']} MSP bins (test)", ""]
    bins = results["msp_bins"]
    lines.append("| bin | MSP range | n | memorization share | " + " | ".join(f"NDCG {m}" for m in models) + " |")
    lines.append("|---|---|---|---|" + "---|" * len(models))
    for b in bins:
        lines.append(
            f"| {b['bin']} | {b['msp_lo']:.3g}-{b['msp_hi']:.3g} | {b['n']} | {b['share_memorization']:.3f} | "
            + " | ".join(_fmt(b[f"ndcg:{m}"]) for m in models) + " |"
        )

    if results["hybrid"]:
        lines += ["", "## Hybrid (ID weight alpha = sigmoid(q * (MSP - tau)))", ""]
        lines.append(f"| GR model | q | tau | valid NDCG@{k} | test NDCG@{k} | test Recall@{k} | "
                     f"test NDCG@{k} minus {results['id_model']} (95%) | minus the GR model (95%) | "
                     "fixed alpha | fixed valid NDCG | fixed test NDCG |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for name, h in results["hybrid"].items():
            a, f = h["adaptive"], h["fixed"]
            vs = a["test"].get("vs", {})
            lines.append(
                f"| {name} | {a['q']:g} | {a['tau']:g} | {_fmt(a['valid_ndcg'])} | {_fmt(a['test'][f'ndcg@{k}'])} | "
                f"{_fmt(a['test'][f'recall@{k}'])} | {_ci(vs.get(results['id_model']))} | {_ci(vs.get(name))} | "
                f"{f['alpha']:g} | {_fmt(f['valid_ndcg'])} | {_fmt(f['test'][f'ndcg@{k}'])} |"
            )
    for note in results.get("notes", []):
        lines += ["", f"Note: {note}"]
    lines += ["", "![analysis](analysis.png)", ""]
    return "\n".join(lines)


def analyze(
    split: Any,
    codes: torch.Tensor,
    num_items: int,
    id_valid: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    id_test: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    gr_rankings: Mapping[str, Mapping[str, Ranking]] | None,
    out_dir: str | Path,
    *,
    id_name: str = "SASRec",
    dataset: str = "dataset",
    k: int = 10,
    num_bins: int = 5,
) -> dict[str, Any]:
    """Write report.md, analysis.png and results.json for the ID model's and GR models' top-K lists.

    id_valid / id_test: (items (N, K), scores (N, K), MSP over all items (N,)) of the ID model.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_valid, n_test = len(split.valid_targets), len(split.test_targets)
    gr = check_rankings(gr_rankings, n_valid, n_test)
    for part, triple, want in (("id_valid", id_valid, n_valid), ("id_test", id_test, n_test)):
        if len(triple) != 3 or torch.as_tensor(triple[0]).shape[0] != want or torch.as_tensor(triple[2]).shape != (want,):
            raise InvalidInput(f"{part} must be (items ({want}, K), scores ({want}, K), msp ({want},))")
    if id_name in gr:
        raise InvalidInput(f"id_name {id_name!r} clashes with a GR model name")
    timing: dict[str, float] = {}
    notes: list[str] = []
    valid_t = torch.as_tensor(split.valid_targets, dtype=torch.long)
    test_t = torch.as_tensor(split.test_targets, dtype=torch.long)

    t0 = time.perf_counter()
    graph = build_transition_graph(split.train_sequences, num_items)
    lab_valid = label_instances(None, split.valid_histories, valid_t, num_items, graph=graph)
    lab_test = label_instances(None, split.test_histories, test_t, num_items, graph=graph)
    timing["labels_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    support = token_support(split.train_sequences, split.test_histories, test_t, codes)
    timing["token_level_s"] = time.perf_counter() - t0

    from ..metrics import ndcg_at_k, paired_bootstrap, recall_at_k

    rankings_test: dict[str, torch.Tensor] = {id_name: torch.as_tensor(id_test[0]).long()}
    rankings_test.update({name: parts["test"][0] for name, parts in gr.items()})

    hybrid: dict[str, Any] = {}
    for name, parts in gr.items():
        if "valid" not in parts:
            notes.append(f"no validation rankings for {name}: hybrid skipped")
            continue
        vi, vs = parts["valid"]
        ti, ts = parts["test"]
        ada = grid_search_adaptive(id_valid[0], id_valid[1], id_valid[2], vi, vs, valid_t, k=k)
        fix = grid_search_fixed(id_valid[0], id_valid[1], vi, vs, valid_t, k=k)
        ranked_ada = fuse_rankings(id_test[0], id_test[1], ti, ts, adaptive_alpha(id_test[2], ada["q"], ada["tau"]), k=k)
        ranked_fix = fuse_rankings(id_test[0], id_test[1], ti, ts, fix["alpha"], k=k)
        hybrid[name] = {
            "adaptive": {
                "q": ada["q"], "tau": ada["tau"], "valid_ndcg": ada[f"ndcg@{k}"], "grid": ada["grid"],
                "test": {f"ndcg@{k}": ndcg_at_k(ranked_ada, test_t, k), f"recall@{k}": recall_at_k(ranked_ada, test_t, k)},
            },
            "fixed": {
                "alpha": fix["alpha"], "valid_ndcg": fix[f"ndcg@{k}"], "grid": fix["grid"],
                "test": {f"ndcg@{k}": ndcg_at_k(ranked_fix, test_t, k), f"recall@{k}": recall_at_k(ranked_fix, test_t, k)},
            },
        }
        rankings_test[f"hybrid({id_name}+{name})"] = ranked_ada
        # Paired over test users: does the hybrid beat each of its two parts?
        hybrid_nd = ndcg_at_k(ranked_ada, test_t, k, per_instance=True)
        hybrid[name]["adaptive"]["test"]["vs"] = {
            part: _interval(paired_bootstrap(hybrid_nd, ndcg_at_k(ranked, test_t, k, per_instance=True)))
            for part, ranked in ((id_name, rankings_test[id_name]), (name, ti))
        }

    models: dict[str, Any] = {}
    ndcg_per: dict[str, torch.Tensor] = {}
    for name, ranked in rankings_test.items():
        nd = ndcg_at_k(ranked, test_t, k, per_instance=True)
        rc = recall_at_k(ranked, test_t, k, per_instance=True)
        ndcg_per[name] = nd
        models[name] = {
            "by_label": metrics_by_label(lab_test, ranked, test_t, k),
            "by_token_depth": _by_depth(support, nd, rc, lab_test, k),
        }
    bins = msp_bins(id_test[2], lab_test, ndcg_per, num_bins=min(num_bins, n_test))

    def shares(lab: InstanceLabels) -> dict[str, Any]:
        return {"n": len(lab), **label_shares(lab)}

    results: dict[str, Any] = {
        "dataset": dataset,
        "id_model": id_name,
        "k": k,
        "labels": {"valid": shares(lab_valid), "test": shares(lab_test)},
        "token_level": {
            "levels": support.num_levels,
            "table": token_level_table(lab_test, support),
            "table_hop1": token_level_table(lab_test, support, max_hop=1),
        },
        "models": models,
        "hybrid": hybrid,
        "msp_bins": bins,
        "timing": timing,
        "notes": notes,
    }
    results = _clean(results)
    _plot(results, out / "analysis.png", k)
    (out / "report.md").write_text(_markdown(results, k))
    results["files"] = {"report": str(out / "report.md"), "plot": str(out / "analysis.png"), "json": str(out / "results.json")}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


def run_analysis(
    prepared_dir: str | Path | Any,
    out_dir: str | Path,
    gr_rankings: Mapping[str, Mapping[str, Ranking]] | None = None,
    sasrec_epochs: int = 200,
    seed: int = 0,
    *,
    sasrec_config: Any = None,
    patience: int = 10,
    max_seconds: float | None = None,
    retrain: bool = False,
    num_bins: int = 5,
    progress: bool = False,
) -> dict[str, Any]:
    """Train/reload SASRec on a prepared dataset and write the full study (see `analyze`) to out_dir.

    prepared_dir may also be an already loaded Prepared. SASRec is saved to out_dir/sasrec
    and reloaded on a rerun (retrain=True forces training). Its histories are the last
    max_len items rebuilt from the split's training sequences (see sasrec.sasrec_histories).
    """
    from .sasrec import SASRec, SASRecConfig, fit, sasrec_histories

    if isinstance(prepared_dir, (str, Path)):
        from ..data.prepare import load_prepared

        prepared = load_prepared(prepared_dir)
    else:
        prepared = prepared_dir
    split, catalog = prepared.split, prepared.catalog
    num_items = int(prepared.data.num_items)
    codes = catalog.codes
    if codes.shape[0] != num_items or not torch.equal(catalog.item_ids, torch.arange(num_items)):
        raise InvalidInput(f"prepared catalog must list items 0..{num_items - 1} in order")
    check_rankings(gr_rankings, len(split.valid_targets), len(split.test_targets))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = sasrec_config or SASRecConfig(num_items=num_items)
    model_dir = out / "sasrec"
    t0 = time.perf_counter()
    model = None
    # The saved model is reused only for the same data (fingerprint) and the same shape.
    fingerprint = hashlib.sha256(json.dumps(
        [num_items, [len(q) for q in split.train_sequences], list(split.valid_targets), list(split.test_targets)]
    ).encode()).hexdigest()
    info_path = model_dir / "fit_info.json"
    if not retrain and (model_dir / "sasrec.json").is_file() and info_path.is_file():
        try:
            info = json.loads(info_path.read_text())
        except json.JSONDecodeError:
            info = {}
        if info.get("fingerprint") == fingerprint and info.get("seed") == seed:
            model = SASRec.load(model_dir)
            if model.config != config:
                model = None  # saved model has another shape: retrain
    trained = model is None
    if model is None:
        model = fit(split, num_items, config, epochs=sasrec_epochs, patience=patience, seed=seed,
                    max_seconds=max_seconds, progress=progress)
        info_path.unlink(missing_ok=True)
        model.save(model_dir)
        info_path.write_text(json.dumps({"fingerprint": fingerprint, "seed": seed}))
    fit_s = time.perf_counter() - t0
    valid_h, test_h = sasrec_histories(split, model.config.max_len)
    top = min(50, num_items)
    id_valid = model.top_k(valid_h, top)
    id_test = model.top_k(test_h, top)
    config_blob = getattr(prepared, "config", None)
    name = config_blob.get("dataset", "dataset") if isinstance(config_blob, dict) else "dataset"
    results = analyze(split, codes, num_items, id_valid, id_test, gr_rankings, out, dataset=name, num_bins=num_bins)
    from ..metrics import evaluate_ranking

    results["sasrec"] = {
        "trained": trained,
        "fit_s": fit_s,
        "epochs_run": len(model.train_log),
        "valid": evaluate_ranking(id_valid[0], torch.as_tensor(split.valid_targets), (10,)),
        "test": evaluate_ranking(id_test[0], torch.as_tensor(split.test_targets), (10,)),
        "config": dict(vars(model.config)),
    }
    results["provenance"] = provenance({"catalog": prepared.catalog.fingerprint()})
    write_json(out / "results.json", _clean(results), indent=1)
    return results
