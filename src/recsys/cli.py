"""The `recsys` command: `recsys <command> [hydra overrides...]`."""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str, str]] = {
    # command: (config name, job module, help)
    "data prepare": ("prepare", "recsys.jobs.prepare", "raw data -> processed split + vocab"),
    "evaluate": ("evaluate", "recsys.jobs.evaluate", "fit a model, full-catalogue metrics"),
    "download": ("download", "recsys.jobs.download", "fetch a public dataset (checksummed)"),
    "train": ("train", "recsys.jobs.train", "train two-tower retrieval -> model bundle"),
    "retrain": (
        "retrain",
        "recsys.jobs.retrain",
        "base data + stored events -> candidate, gated against production -> registry",
    ),
    "train-ranker": (
        "train_ranker",
        "recsys.jobs.train_ranker",
        "retrain only the ranker -> new bundle version",
    ),
    "build-index": (
        "build_index",
        "recsys.jobs.build_index",
        "add a FAISS index -> new bundle version",
    ),
    "serve": ("serve", "recsys.jobs.serve", "serve a bundle over HTTP (local or Ray Serve)"),
    "batch-score": (
        "batch_score",
        "recsys.jobs.batch_score",
        "top-K for many users -> Parquet (local or Ray Data)",
    ),
    "export-embeddings": (
        "export_embeddings",
        "recsys.jobs.export_embeddings",
        "book/user vectors -> Parquet + manifest (+ .npy, FAISS)",
    ),
    "export-torchserve": (
        "export_torchserve",
        "recsys.jobs.export_torchserve",
        "a bundle as a TorchServe model archive (.mar) + loopback config (extra: torchserve)",
    ),
    "experiments report": (
        "experiments_report",
        "recsys.jobs.experiments_report",
        "click-through per variant of an experiment, with intervals",
    ),
    "models list": ("models_list", "recsys.jobs.models", "versions: stage, metrics, lineage"),
    "models show": ("models_show", "recsys.jobs.models", "one version and its history"),
    "models register": (
        "models_register",
        "recsys.jobs.models",
        "add a bundle version to the model registry",
    ),
    "models promote": (
        "models_promote",
        "recsys.jobs.models",
        "make a version production (following servers swap)",
    ),
    "models rollback": (
        "models_rollback",
        "recsys.jobs.models",
        "back to the previous production version",
    ),
    "models prune": (
        "models_prune",
        "recsys.jobs.models",
        "delete unneeded versions (never production, recent or in use)",
    ),
    "store backup": (
        "store_backup",
        "recsys.jobs.store_backup",
        "back up the store (consistent while serving) -> one file + manifest",
    ),
    "store restore": (
        "store_restore",
        "recsys.jobs.store_restore",
        "restore a store backup (checksum verified; force=true to replace data)",
    ),
    "token": ("token", "recsys.jobs.token", "issue a development JWT (sub=…, scopes=[…])"),
    "demo lifecycle": (
        "demo_lifecycle",
        "recsys.jobs.demo_lifecycle",
        "events -> retrain -> gate -> promote -> the server switches, offline",
    ),
    "demo": ("demo", "recsys.jobs.demo", "the whole product end to end, offline"),
}


def usage() -> str:
    lines = ["usage: recsys <command> [key=value ...]", "", "commands:"]
    lines += [f"  {name:<18} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += [
        "",
        "Options are Hydra overrides, e.g. `recsys evaluate data=amazon_book model=als`.",
        "`recsys <command> --help` shows the configuration.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    for words in (2, 1):
        name = " ".join(args[:words])
        if name in COMMANDS and len(args) >= words:
            config_name, module, _ = COMMANDS[name]
            from recsys.runner import run

            run(config_name, importlib.import_module(module).main, args[words:])
            return
    print(usage(), file=sys.stderr)
    if args and args[0] not in ("-h", "--help", "help"):
        print(f"\nerror: unknown command '{' '.join(args[:2])}'", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
