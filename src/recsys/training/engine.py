"""Where a Lightning fit runs: in this process (``engine=local``) or as DDP across Ray Train
workers (``engine=ray``, ``trainer.workers=N``).

Both engines take the same three things: the module (weights initialised, feature tables
attached), its datamodule and a :class:`TrainerPlan` (the trainer's resolved config and its
callbacks, plain enough to send to a worker), plus a ``keep`` function that runs where the
fit ran, puts the weights to keep into the module (the best checkpoint's, or the last) and
returns facts about the fit. Afterwards the caller's module holds those weights, whichever
engine ran, so everything downstream (evaluation, the index, the bundle) is one code path.

The Ray engine runs ``TorchTrainer`` with Lightning's DDP strategy (``RayDDPStrategy``,
gloo on CPU): each worker gets a copy of the module and the data through Ray's object store
and trains on its share of every global batch (the datamodules shard batches by rank, so
``batch_size`` stays the global batch and an epoch has the same steps as on one process);
gradients are averaged. Every epoch's Lightning checkpoint goes to ``ray.storage`` (shared
storage on a cluster), from which a restarted worker group resumes (``ray.max_failures``);
at the end rank 0 reports the kept weights as the run's last checkpoint, which the driver
loads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint, ProgressBar
from lightning.pytorch.loggers import Logger

from recsys.errors import RecsysError

log = logging.getLogger(__name__)

# (trainer, module) -> facts; puts the weights to keep into the module. Runs where the fit ran
# (on a Ray worker: rank 0 only), so it must be a module-level function (it is pickled).
Keep = Callable[[L.Trainer, L.LightningModule], dict[str, Any]]

KEPT_FILE = "kept.pt"  # the final checkpoint's file: {"state_dict", "facts"}


@dataclass(frozen=True)
class TrainerPlan:
    """A Lightning trainer as data: its config node (resolved, with ``_target_``) and its
    callbacks and loggers as objects, built where the fit runs.

    Attributes:
        node: the trainer's config (``trainer`` or ``ranker.trainer``), resolved; the
            ``workers`` key (the Ray engine's) is not a trainer argument and is left out.
        callbacks: callback objects.
        loggers: logger objects; None keeps the node's own ``logger`` setting.
        overrides: further trainer arguments (``max_epochs`` of a selected-epochs run, ...).
    """

    node: dict[str, Any]
    callbacks: list[L.Callback] = field(default_factory=list)
    loggers: list[Logger] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def build(self, extra_callbacks: list[L.Callback] | None = None, **arguments: Any) -> L.Trainer:
        """The trainer; ``arguments`` override the node's and the plan's."""
        node = {k: v for k, v in self.node.items() if k != "workers"}
        kwargs: dict[str, Any] = {**self.overrides, **arguments}
        kwargs["callbacks"] = [*self.callbacks, *(extra_callbacks or [])]
        if self.loggers is not None:
            kwargs.setdefault("logger", self.loggers or False)
        trainer: L.Trainer = hydra.utils.instantiate(node, **kwargs)
        return trainer

    def with_callbacks(self, callbacks: list[L.Callback]) -> TrainerPlan:
        return replace(self, callbacks=callbacks)


class Engine(Protocol):
    """Runs one Lightning fit; see the module docstring."""

    def fit(
        self,
        module: L.LightningModule,
        datamodule: L.LightningDataModule,
        plan: TrainerPlan,
        keep: Keep,
        name: str = "fit",
    ) -> dict[str, Any]:
        """Fit ``module``; afterwards it holds the kept weights. Returns ``keep``'s facts.
        ``name`` tells this fit from the run's others (a Ray run's folder)."""
        ...

    def session(self) -> contextlib.AbstractContextManager[None]:
        """Around a training run's fits: what they share (one Ray for all of them)."""
        ...


class LocalEngine:
    """The fit in this process (the trainer's own ``devices``)."""

    def fit(
        self,
        module: L.LightningModule,
        datamodule: L.LightningDataModule,
        plan: TrainerPlan,
        keep: Keep,
        name: str = "fit",
    ) -> dict[str, Any]:
        trainer = plan.build()
        trainer.fit(module, datamodule=datamodule)
        return keep(trainer, module)

    def session(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


@dataclass(frozen=True)
class RayEngine:
    """DDP across ``workers`` Ray Train workers (see the module docstring).

    Attributes:
        workers: worker processes (``trainer.workers``).
        storage: where checkpoints go (``ray.storage``): a path every node can reach on a
            cluster (a shared mount), or a URI Ray supports (``s3://``...).
        address: an existing cluster (``auto``, ``ray://...``); None starts a local one.
        cpus_per_worker: CPUs each worker reserves (and its torch threads).
        max_failures: worker-group restarts allowed; a restart resumes from the last epoch's
            checkpoint.
        run: names this training run's folders under ``storage`` (``<run>-<fit>``; a new
            run never resumes an old one's checkpoints).
        keep_checkpoints: leave each fit's folder on ``storage`` after it succeeds (default:
            removed once the driver holds the weights; they are there for restarts).
    """

    workers: int
    storage: str
    address: str | None = None
    cpus_per_worker: float = 1.0
    max_failures: int = 0
    keep_checkpoints: bool = False
    run: str = field(default_factory=lambda: time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}")

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise RecsysError(f"trainer.workers must be >= 1, got {self.workers}.")
        if self.cpus_per_worker <= 0:
            raise RecsysError(f"ray.cpus_per_worker must be > 0, got {self.cpus_per_worker}.")
        if not self.storage:
            raise RecsysError(
                "ray.storage is needed with ray.address: storage every node of the cluster "
                "reaches (a shared mount or s3://...), where checkpoints and weights go."
            )

    def fit(
        self,
        module: L.LightningModule,
        datamodule: L.LightningDataModule,
        plan: TrainerPlan,
        keep: Keep,
        name: str = "fit",
    ) -> dict[str, Any]:
        from ray.train import (
            CheckpointConfig,
            FailureConfig,
            RunConfig,
            ScalingConfig,
            TrainingFailedError,
        )
        from ray.train.torch import TorchTrainer

        storage = _storage_path(self.storage)
        folder = f"{self.run}-{name}"
        with self.session():
            trainer = TorchTrainer(
                _worker_loop,
                train_loop_config={
                    "module": module,
                    "datamodule": datamodule,
                    "plan": plan,
                    "keep": keep,
                    "threads": max(1, int(self.cpus_per_worker)),
                    # the best checkpoint: in the run's folder on the shared storage, so a
                    # restarted group (any node) finds the one chosen before the failure
                    "best": f"{storage}/{folder}/best",
                },
                scaling_config=ScalingConfig(
                    num_workers=self.workers,
                    use_gpu=False,
                    resources_per_worker={"CPU": self.cpus_per_worker},
                ),
                run_config=RunConfig(
                    name=folder,
                    storage_path=storage,
                    checkpoint_config=CheckpointConfig(num_to_keep=1),
                    failure_config=FailureConfig(max_failures=self.max_failures),
                ),
            )
            try:
                result = trainer.fit()
            except TrainingFailedError as exc:
                raise RecsysError(
                    f"distributed training ({name}) failed after {self.max_failures} "
                    f"restart(s) allowed (ray.max_failures): {exc}"
                ) from None
            if result.checkpoint is None:
                raise RecsysError("distributed training reported no weights.")
            with result.checkpoint.as_directory() as checkpoint:
                kept = torch.load(Path(checkpoint) / KEPT_FILE, weights_only=False)
            if not self.keep_checkpoints and "://" not in storage:
                shutil.rmtree(Path(storage) / folder, ignore_errors=True)
        module.load_state_dict(kept["state_dict"])
        facts: dict[str, Any] = kept["facts"]
        facts["workers"] = self.workers
        log.info("Ray Train %s: %d workers, checkpoints under %s", name, self.workers, self.storage)
        return facts

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """One Ray for every fit of the run: started here (and stopped after) unless one is
        already connected."""
        started_here = self._start_ray()
        try:
            yield
        finally:
            if started_here:
                import ray

                ray.shutdown()

    def _start_ray(self) -> bool:
        """Connect to (or start) Ray, as ``recsys serve engine=ray`` does; True when this
        call started it (and so stops it)."""
        import ray

        from recsys.serving.ray_runner import start_ray

        # the Train controller polls its workers this often (Ray's default, 2 s, is paid at
        # every fit's start and end: 23 -> 14 s a fit here); a local Ray's processes inherit it
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
        started_here = not ray.is_initialized()
        start_ray(self.address)
        needed = self.workers * self.cpus_per_worker
        have = float(ray.cluster_resources().get("CPU", 0.0))
        if not self.address and needed > have:  # a cluster may autoscale; a local one won't
            if started_here:
                ray.shutdown()
            raise RecsysError(
                f"trainer.workers={self.workers} x ray.cpus_per_worker={self.cpus_per_worker} "
                f"needs {needed:g} CPUs and this Ray has {have:g}: lower trainer.workers or "
                "ray.cpus_per_worker, or give ray.address of a larger cluster."
            )
        return started_here


def _storage_path(storage: str) -> str:
    if "://" in storage:
        return storage
    path = Path(storage).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: the plan's trainer with Lightning DDP over the worker group,
    resumed from the run's last checkpoint after a restart; rank 0 reports the kept weights."""
    import ray.train
    from ray.train.lightning import (
        RayDDPStrategy,
        RayLightningEnvironment,
        RayTrainReportCallback,
        prepare_trainer,
    )

    module: L.LightningModule = config["module"]
    plan: TrainerPlan = config["plan"]
    keep: Keep = config["keep"]
    torch.set_num_threads(config["threads"])  # the CPUs this worker reserved
    rank = ray.train.get_context().get_world_rank()
    scratch = Path(tempfile.mkdtemp(prefix=f"recsys-train-rank{rank}-"))
    try:
        callbacks = []
        for callback in plan.callbacks:
            if isinstance(callback, ProgressBar):
                continue  # worker logs are not a terminal
            if isinstance(callback, ModelCheckpoint):
                callback.dirpath = config["best"]  # shared: a restart keeps the best so far
            callbacks.append(callback)
        trainer = plan.with_callbacks(callbacks).build(
            extra_callbacks=[_epoch_reporter(RayTrainReportCallback)],
            enable_checkpointing=True,  # the reporter is a Checkpoint callback
            strategy=RayDDPStrategy(),
            plugins=[RayLightningEnvironment()],
            accelerator="cpu",
            devices="auto",
            use_distributed_sampler=False,  # the datamodules shard whole batches by rank
            enable_progress_bar=False,
        )
        trainer = prepare_trainer(trainer)
        name = RayTrainReportCallback.CHECKPOINT_NAME
        resume = _resume_from(ray.train.get_checkpoint(), scratch, name)
        trainer.fit(module, datamodule=config["datamodule"], ckpt_path=resume)
        facts = keep(trainer, module) if rank == 0 else {}
        final = scratch / "final"
        final.mkdir()
        checkpoint = None
        if rank == 0:
            torch.save({"state_dict": module.state_dict(), "facts": facts}, final / KEPT_FILE)
            checkpoint = ray.train.Checkpoint.from_directory(str(final))
        ray.train.report({"final": 1}, checkpoint=checkpoint)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _epoch_reporter(base: type) -> L.Callback:
    """Ray's per-epoch report as a ``Checkpoint`` callback: Lightning runs those last, in
    order, so each epoch's checkpoint is saved after ModelCheckpoint has recorded that
    epoch's score (a plain callback would save the best-so-far of the epoch before)."""

    class ReportAfterCheckpoints(base, Checkpoint):
        pass

    reporter: L.Callback = ReportAfterCheckpoints()
    return reporter


def _resume_from(checkpoint: Any, scratch: Path, name: str) -> str | None:
    """The Lightning checkpoint a restarted worker group resumes from, copied to ``scratch``."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        source = Path(folder) / name
        if not source.is_file():
            return None
        target = scratch / name
        shutil.copyfile(source, target)
    log.info("resuming from the last epoch's checkpoint (%s)", target)
    return str(target)
