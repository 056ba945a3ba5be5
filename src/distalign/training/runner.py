"""LoRA fine-tuning of the IFT and DPO baselines and of the method ("ours"), with trl 1.16.

``train_adapter`` writes ``results/adapters/{dataset}/{model}/{method}/``:
``adapter_config.json`` + ``adapter_model.safetensors`` (PEFT), ``training_config.json``
(resolved hyperparameters, method spec, steering tokens and ids, seeds, input hashes, library
versions) and ``metrics.jsonl`` (one row per logged step, with its ``stage``).

Kinds (``methods.X.kind``):

- ``ift``: SFTTrainer, completion-only loss, on the SFT rows (no steering token).
- ``dpo``: DPO on the preference rows without steering tokens (chosen r, rejected r_neg),
  continuing the IFT adapter of the same (dataset, model) (``init_adapter``).
- ``ours``: stage ``sft`` = SFT warm-up on [tau_a; r]; stage ``pref`` continues the *same*
  adapter with KTO (or DPO, or the answer NLL, or nothing: ``methods.X.preference``) + ``kl_weight * L_KL``
  (``methods.X.kl``), see :mod:`distalign.training.trainers`.

Reference model of every preference stage = the adapter the stage starts from (the stage-1 /
IFT adapter): trl copies it into a frozen PEFT adapter named ``ref`` and, with
``precompute_ref_log_probs=True``, scores every (KL) completion with it once before training.

Fixed choices not in the config (recorded in ``training_config.json``): AdamW (torch), linear
decay with 5% warm-up, grad-clip 1.0, no weight decay, dropout of the base model disabled by trl.
The KTO rows are shuffled once (seeded) and trained in that order every epoch: trl 1.16 requires
a sequential sampler for its KL pairing. SFT and DPO use the Trainer's seeded random sampler.

Resumability: each stage trains in ``{out_dir}.work/{stage}/`` with checkpoints every
``training.save_steps``; a finished stage is frozen as ``{stage}.done/``. A rerun with the same
spec (config, inputs) resumes from the newest *valid* checkpoint (a corrupt one is deleted; none
left -> the stage starts clean); a changed spec wipes the work folder. The final folder is
written atomically at the very end and the work folder is then removed.

Logging: every ``training.logging_steps`` steps the metrics (``[sft] step 10/126 {'loss': ...}``)
go to the job's log file only; the console (and the log) get a progress line at most every 30 s
and at the end of a stage (``train <dataset>/<model>/<method> sft: 60/126 steps (47%), 2.5 s/step,
~2 min 45 s left, loss 1.23``, ``distalign.core.progress``; a resumed stage counts its rate from where it
resumed). HF's tqdm bar is off: it redraws with carriage returns, which is one endless line in a
log file and garbles the console when several jobs train at once; so is the printer HF puts in its
place (every metrics dict to stdout, i.e. the console).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distalign.core.attributes import Attribute, method_token_set
from distalign.core.config import TRAINED_KINDS, TrainSpec, stage_epochs
from distalign.core.io import atomic_dir, read_jsonl, write_json
from distalign.core.progress import Progress
from distalign.core.scripting import FILE_ONLY
from distalign.core.seeds import derive_seed

log_ = logging.getLogger("distalign.train")


LR_SCHEDULER = "linear"  # a stage's lr_scheduler_type when unset (transformers' default, the paper's)


FIXED = {
    "optim": "adamw_torch",
    "lr_scheduler_type": LR_SCHEDULER,
    "warmup_steps": 0.05,
    "max_grad_norm": 1.0,
    "weight_decay": 0.0,
    "save_total_limit": 2,
}


WORK_SUFFIX = ".work"


SPEC_FILE = "spec.json"


class TrainError(RuntimeError):
    """Training cannot run as configured; the message names the method/config key."""


def library_versions() -> dict[str, str]:
    import accelerate
    import datasets
    import peft
    import torch
    import transformers
    import trl

    return {m.__name__: m.__version__ for m in (torch, transformers, peft, trl, accelerate, datasets)}


def _sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    p = Path(path)
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def work_dir_of(out_dir: str | os.PathLike) -> Path:
    out_dir = Path(out_dir)
    return out_dir.parent / (out_dir.name + WORK_SUFFIX)


def _valid_checkpoint(ckpt: Path) -> bool:
    """A checkpoint HF can resume from: readable state, adapter weights, optimizer and scheduler."""
    try:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        if "global_step" not in state:
            return False
        from safetensors import safe_open

        with safe_open(str(ckpt / "adapter_model.safetensors"), framework="pt") as fh:
            if not list(fh.keys()):
                return False
        return all(
            (ckpt / f).is_file() and (ckpt / f).stat().st_size > 0 for f in ("optimizer.pt", "scheduler.pt")
        )
    except Exception:  # noqa: BLE001 - any failure to read means "not resumable"
        return False


def last_valid_checkpoint(stage_dir: Path) -> str | None:
    """Newest valid ``checkpoint-N`` in ``stage_dir``; invalid ones are deleted."""
    if not stage_dir.is_dir():
        return None
    ckpts = sorted(
        (p for p in stage_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    for c in ckpts:
        if _valid_checkpoint(c):
            return str(c)
        log_.warning("deleting unusable checkpoint %s", c)
        shutil.rmtree(c, ignore_errors=True)
    return None


def _steering(job: TrainSpec, tokenizer) -> tuple[list[str], list[int]]:
    from distalign.modeling.models import single_token_ids

    attr = Attribute.from_config(job.attribute_name, job.attribute)
    ts = method_token_set(job.spec, attr)
    tokens = attr.steering_tokens(ts)
    ids = single_token_ids(
        tokenizer, tokens, where=f"method {job.method!r}, token set {ts!r} of attribute {attr.name!r}"
    )
    return tokens, ids


def _device(tr: dict) -> str:
    from distalign.modeling.models import resolve_device

    return resolve_device(tr.get("device", "auto"))


def _hf_args(tr: dict, stage_cfg: dict, stage_dir: Path, seed: int, device: str) -> dict[str, Any]:
    """Arguments shared by SFTConfig, KTOConfig and DPOConfig."""
    cpu = device == "cpu"
    return dict(
        output_dir=str(stage_dir),
        num_train_epochs=float(stage_cfg["epochs"]),
        per_device_train_batch_size=int(stage_cfg["batch_size"]),
        learning_rate=float(stage_cfg["learning_rate"]),
        max_length=int(tr["max_length"]),
        logging_steps=int(tr["logging_steps"]),
        logging_first_step=True,
        save_strategy="steps",
        save_steps=int(tr["save_steps"]),
        seed=seed,
        data_seed=seed,
        use_cpu=cpu,
        bf16=not cpu,
        gradient_checkpointing=False,
        report_to="none",
        dataloader_num_workers=0,
        disable_tqdm=True,
        **{
            **FIXED,
            "lr_scheduler_type": stage_cfg.get("lr_scheduler_type") or LR_SCHEDULER,
            # steps (>= 1) or a fraction of the stage's steps, as transformers reads it; unset: FIXED's 5%
            "warmup_steps": FIXED["warmup_steps"]
            if stage_cfg.get("warmup_steps") is None
            else stage_cfg["warmup_steps"],
        },
    )


class _LogCallback:
    """Metric lines for every logged step (log file only) and progress lines (console and log) of one
    stage; ``label`` names the run (``dataset/model/method``)."""

    def __new__(cls, stage: str, label: str = ""):
        from transformers import TrainerCallback

        what = f"train {label} {stage}" if label else f"train {stage}"

        class _CB(TrainerCallback):
            progress: Progress | None = None

            def on_train_begin(self, args, state, control, **kwargs):
                # global_step is the resumed checkpoint's step here, so the rate counts this run's steps
                self.progress = Progress(state.max_steps, what, log_, unit="step", initial=state.global_step)

            def on_step_end(self, args, state, control, **kwargs):
                # the last step's line waits for on_train_end: its loss is logged after on_step_end
                if self.progress is not None and state.global_step < state.max_steps:
                    self.progress.set(state.global_step)

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs:
                    shown = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in logs.items()}
                    log_.info(
                        "[%s] step %d/%d %s",
                        stage,
                        state.global_step,
                        state.max_steps,
                        shown,
                        extra=FILE_ONLY,
                    )
                    if self.progress is not None and isinstance(logs.get("loss"), int | float):
                        self.progress.detail = f"loss {logs['loss']:.4g}"

            def on_train_end(self, args, state, control, **kwargs):
                if self.progress is not None:
                    self.progress.set(state.global_step)
                    self.progress.finish()

        return _CB()


def _load_base(model_dir, device: str):
    from distalign.modeling.models import load_model

    dtype = "float32" if device == "cpu" else None
    tok, model = load_model(model_dir, device="cpu", dtype=dtype, trainable=True)
    tok.padding_side = "right"
    return tok, model


def _load_adapter(model_dir, adapter_dir, device: str):
    from peft import PeftModel

    tok, model = _load_base(model_dir, device)
    return tok, PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)


def _lora(tr: dict):
    from peft import LoraConfig

    lo = tr["lora"]
    tm = lo["target_modules"]
    return LoraConfig(
        r=int(lo["r"]),
        lora_alpha=float(lo["alpha"]),
        lora_dropout=float(lo["dropout"]),
        target_modules=tm[0] if tm == ["all-linear"] else list(tm),
        bias="none",
        task_type="CAUSAL_LM",
    )


def _run_stage(
    name: str, work: Path, build: Callable[[Path, list], Any], callbacks: list, label: str = ""
) -> tuple[Path, list[dict]]:
    """Train one stage (resuming if possible) and freeze it as ``{name}.done/``; return it and its log
    (``label``: the run's name in progress lines)."""
    done = work / f"{name}.done"
    if (done / "adapter_config.json").exists() and (done / "history.json").exists():
        log_.info("[%s] already complete in %s", name, done)
        return done, json.loads((done / "history.json").read_text())
    stage_dir = work / name
    resume = last_valid_checkpoint(stage_dir)
    if resume is None and stage_dir.exists():
        shutil.rmtree(stage_dir)
    log_.info("[%s] %s", name, f"resuming from {resume}" if resume else "starting")
    t0 = time.perf_counter()
    trainer = build(stage_dir, [_LogCallback(name, label), *callbacks])
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # with tqdm off it prints every log dict to stdout (the console)
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - t0
    history = [{"stage": name, **row} for row in trainer.state.log_history]
    steps = trainer.state.global_step
    history.append(
        {
            "stage": name,
            "event": "end",
            "step": steps,
            "epoch": trainer.state.epoch,
            "wall_seconds": seconds,
            "resumed_from": resume,
            "seconds_per_step": seconds / max(steps - (int(resume.split("-")[-1]) if resume else 0), 1),
        }
    )
    with atomic_dir(done) as tmp:
        trainer.model.save_pretrained(str(tmp), selected_adapters=["default"])
        (tmp / "history.json").write_text(json.dumps(history, indent=1, default=str))
    shutil.rmtree(stage_dir, ignore_errors=True)
    log_.info("[%s] done: %d steps in %.1f s", name, steps, seconds)
    return done, history


def _stage_config(name: str, stage: dict, n_rows: int) -> dict:
    """The stage section with ``min_steps`` resolved into epochs for ``n_rows`` rows (logged when raised)."""
    epochs = stage_epochs(stage, n_rows)
    if epochs != float(stage["epochs"]):
        log_.info(
            "[%s] %d rows: epochs raised from %s to %s to reach min_steps %d",
            name,
            n_rows,
            stage["epochs"],
            epochs,
            stage["min_steps"],
        )
    return {**stage, "epochs": epochs}


def _sft_stage(name, work, model_dir, rows, tr, seed, device, callbacks, label=""):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    stage = _stage_config(name, tr["sft"], len(rows))

    def build(stage_dir: Path, cbs: list):
        tok, model = _load_base(model_dir, device)
        args = SFTConfig(
            **_hf_args(tr, stage, stage_dir, seed, device), completion_only_loss=True, dataset_num_proc=None
        )
        return SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            peft_config=_lora(tr),
            callbacks=cbs,
        )

    return _run_stage(name, work, build, callbacks, label)


def _pref_stage(
    name,
    work,
    model_dir,
    start_adapter,
    rows,
    tr,
    seed,
    device,
    callbacks,
    *,
    preference: str,
    steering_ids,
    use_kl: bool,
    binding_weight: float = 0.0,
    replay: dict | None = None,
    replay_rows: list[dict] | None = None,
    label: str = "",
):
    from datasets import Dataset

    from distalign.training.trainers import (
        SteeringDPOConfig,
        SteeringDPOTrainer,
        SteeringKTOConfig,
        SteeringKTOTrainer,
        SteeringSFTConfig,
        SteeringSFTTrainer,
    )

    pc = _stage_config(name, tr["preference"], len(rows))

    def build(stage_dir: Path, cbs: list):
        tok, model = _load_adapter(model_dir, start_adapter, device)
        common = _hf_args(tr, pc, stage_dir, seed, device)
        common.update(kl_weight=float(tr["kl_weight"]), kl_vocabulary=tr["kl_vocabulary"], use_kl=use_kl)
        if replay is not None:
            common.update(replay_weight=float(replay["weight"]), replay_batch_size=int(replay["batch_size"]))
        if preference == "nll":
            trainer_class = SteeringSFTTrainer
            args = SteeringSFTConfig(**common, dataset_num_proc=None, binding_weight=float(binding_weight))
        elif preference == "dpo":
            trainer_class = SteeringDPOTrainer
            args = SteeringDPOConfig(**common, beta=float(pc["beta"]), precompute_ref_log_probs=True)
        else:
            use_kto = preference == "kto"
            trainer_class = SteeringKTOTrainer
            args = SteeringKTOConfig(
                **common,
                beta=float(pc["beta"]),
                desirable_weight=float(pc["lambda_desirable"]),
                undesirable_weight=float(pc["lambda_undesirable"]),
                precompute_ref_log_probs=use_kto,
                train_sampling_strategy="sequential",
                use_kto=use_kto,
            )
        return trainer_class(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            callbacks=cbs,
            steering_ids=steering_ids,
            replay_rows=replay_rows if replay is not None else None,
            replay_seed=seed,
        )

    return _run_stage(name, work, build, callbacks, label)


def _stage_steps(stage: dict, n_rows: int) -> int:
    """Optimizer steps of a stage over ``n_rows`` rows (``min_steps`` resolved), as the Trainer counts them."""
    epochs = stage_epochs(stage, n_rows)
    return max(1, math.ceil(math.ceil(n_rows / int(stage["batch_size"])) * epochs))


def _replay_instructions(path: Path) -> list[dict]:
    from distalign.data.instructions import InstructionsError, load_instructions

    try:
        return load_instructions(path, key="training.replay.instructions")
    except InstructionsError as err:
        raise TrainError(str(err)) from None


def _replay_set(work: Path, model_dir, device: str, instructions: list[dict], replay: dict, seed: int):
    """The base model's answers to the replay instructions the stage will use (one per row it takes,
    at most one per instruction), kept in the work folder so that a resumed job does not sample them
    again (the folder is wiped when the spec changes)."""
    from distalign.training.replay import replay_rows

    cache = work / "replay.json"
    if cache.exists():
        rows = json.loads(cache.read_text())
        log_.info("replay: %d base-model answers from %s", len(rows), cache)
        return rows
    tok, model = _load_base(model_dir, device)
    if device != "cpu":
        model.to(device)
    rows = replay_rows(
        model, tok, model_dir, instructions, seed=seed, max_new_tokens=int(replay["max_new_tokens"])
    )
    del model
    if not rows:
        raise TrainError("training.replay: the base model gave an empty answer to every replay instruction")
    tokens = sum(len(r["input_ids"]) - r["answer_start"] for r in rows)
    log_.info("replay: the base model answered %d instructions (%d answer tokens)", len(rows), tokens)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows))
    tmp.replace(cache)
    return rows


def first_method_of_kind(config: dict, kind: str) -> str:
    for name, spec in config["methods"].items():
        if spec.get("kind") == kind:
            return name
    raise TrainError(f"config key 'methods': no method of kind {kind!r} (needed to initialise DPO)")


def train_adapter(
    config: dict | TrainSpec,
    dataset: str,
    method: str,
    model_dir,
    sft_path,
    pref_path,
    out_dir,
    log: str | os.PathLike | None = None,
    init_adapter=None,
    callbacks: list | None = None,
    story_path=None,
    replay_path=None,
) -> Path:
    """Train the LoRA adapter of (dataset, model, method) into ``out_dir`` (atomically, resumably).

    ``config``: a :class:`~distalign.core.config.TrainSpec` (the workflow builds it from the rule's params)
    or a whole validated config (tests, bench: ``TrainSpec.from_config``).

    ``log``: optional file that receives the distalign/transformers log lines (appended).
    ``init_adapter``: the IFT adapter that the ``dpo`` kind continues. ``callbacks``: extra HF
    TrainerCallbacks (tests use one to simulate a killed job). ``story_path``: D_story
    (``distalign.data.stories``), required by methods with ``story_data: true``; its rows join the SFT
    rows and the rows of the ``nll`` second stage (stories longer than ``training.max_length``
    tokens are cut there, which only drops their ending). ``replay_path``: the replay instructions of a
    job with ``training.replay`` on (None: the path the spec names; :mod:`distalign.training.replay`).
    """
    handler = None
    if log is not None:
        handler = logging.FileHandler(log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        for name in ("distalign", "transformers", "trl"):
            logging.getLogger(name).addHandler(handler)
        logging.getLogger("distalign").setLevel(logging.INFO)
    try:
        job = config if isinstance(config, TrainSpec) else TrainSpec.from_config(config, dataset, method)
        if job.method != method:
            raise TrainError(f"train_adapter: the spec is of method {job.method!r}, not {method!r}")
        return _train(
            job,
            dataset,
            model_dir,
            sft_path,
            pref_path,
            out_dir,
            init_adapter,
            callbacks,
            story_path,
            replay_path,
        )
    finally:
        if handler is not None:
            for name in ("distalign", "transformers", "trl"):
                logging.getLogger(name).removeHandler(handler)
            handler.close()


def _train(
    job: TrainSpec,
    dataset,
    model_dir,
    sft_path,
    pref_path,
    out_dir,
    init_adapter,
    callbacks,
    story_path=None,
    replay_path=None,
) -> Path:
    method, spec, kind = job.method, job.spec, job.kind
    if kind not in TRAINED_KINDS:
        raise TrainError(f"method {method!r} has kind {kind!r}; only ift, dpo and ours are trained")
    if kind == "dpo" and init_adapter is None:
        raise TrainError(f"method {method!r} (kind dpo) needs init_adapter (the IFT adapter)")
    tr = job.training
    device = _device(tr)
    out_dir, work = Path(out_dir), work_dir_of(out_dir)
    callbacks = list(callbacks or [])
    label = f"{dataset}/{Path(model_dir).name}/{method}"

    from distalign.modeling.models import load_tokenizer

    tok = load_tokenizer(model_dir)
    # The spec was checked by the schema and validate_config (a second stage that has a loss, D_story
    # with the nll stage only); what is checked here is what only the caller knows (the files given).
    steering_tokens, steering_ids = _steering(job, tok) if kind == "ours" else (None, None)
    preference = spec.get("preference", "kto") if kind == "ours" else ("dpo" if kind == "dpo" else None)
    use_kl = bool(spec.get("kl", True)) if kind == "ours" else False
    undesirable = spec.get("undesirable", "paper")
    use_stories = bool(spec.get("story_data", False))
    if use_stories and story_path is None:
        raise TrainError(f"method {method!r} has story_data: true but no D_story file was given (story_path)")
    binding_weight = job.story_binding_weight
    replay = job.replay
    if replay is not None:
        replay_path = Path(replay_path or replay["instructions"])
        instructions = _replay_instructions(replay_path)
    base_seed = job.seed
    seeds = {
        s: derive_seed(base_seed, "train", dataset, method, s) % (2**31) for s in ("sft", "pref", "order")
    }
    if replay is not None:  # only then, so that the record (and work folder) of other jobs is unchanged
        seeds["replay"] = derive_seed(base_seed, "train", dataset, method, "replay") % (2**31)

    record = {
        "dataset": dataset,
        "method": method,
        "method_spec": spec,
        "kind": kind,
        "training": tr,
        "fixed": FIXED,
        "device": device,
        "preference": preference,
        "kl": use_kl,
        "undesirable": undesirable if preference == "kto" else None,
        "steering_tokens": steering_tokens,
        "steering_ids": steering_ids,
        "reference_model": "the adapter the preference stage starts from (frozen copy 'ref', precomputed log-probs)",
        "seed": base_seed,
        "stage_seeds": seeds,
        "model_dir": str(model_dir),
        "inputs": {
            "sft": _sha256(sft_path),
            "pref": _sha256(pref_path),
            "init_adapter": _sha256(init_adapter) if init_adapter else None,
            **({"stories": _sha256(story_path)} if use_stories else {}),
            **({"replay": _sha256(replay_path)} if replay is not None else {}),
        },
        "versions": library_versions(),
    }
    fingerprint = json.dumps({k: v for k, v in record.items() if k != "device"}, sort_keys=True, default=str)
    if work.exists():
        old = work / SPEC_FILE
        if not old.exists() or old.read_text() != fingerprint:
            log_.info("work folder %s belongs to another spec: starting clean", work)
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / SPEC_FILE).write_text(fingerprint)

    history: list[dict] = []
    max_len = int(tr["max_length"])
    if kind in ("ift", "ours"):
        from distalign.training.rows import sft_rows

        rows = sft_rows(read_jsonl(sft_path), tok, steering_ids, max_len)
        if use_stories:
            from distalign.data.datasets import build_sft

            stories = read_jsonl(story_path)
            rows += sft_rows(build_sft(stories), tok, steering_ids, max_len)
            log_.info("D_story: %d story rows join the SFT rows", len(stories))
        log_.info("stage sft: %d rows (steering tokens: %s)", len(rows), steering_tokens)
        last, h = _sft_stage("sft", work, model_dir, rows, tr, seeds["sft"], device, callbacks, label=label)
        history += h
    else:
        last = Path(init_adapter)
    if kind == "dpo" or (kind == "ours" and (preference != "none" or use_kl)):
        from distalign.training.rows import dpo_rows, kto_rows, nll_rows

        pref = read_jsonl(pref_path)
        if preference == "nll":
            binding = binding_weight > 0  # rows get a bind column only when the term is on
            rows = nll_rows(pref, tok, steering_ids, max_len, bind=False if binding else None)
            if use_stories:
                rows += nll_rows(
                    read_jsonl(story_path),
                    tok,
                    steering_ids,
                    max_len,
                    truncate=True,
                    bind=True if binding else None,
                )
        elif preference == "dpo":
            rows = dpo_rows(pref, tok, steering_ids)
        else:
            rows = kto_rows(
                pref, tok, steering_ids, undesirable, int(tr["preference"]["batch_size"]), seeds["order"]
            )
        log_.info("stage pref (%s, kl=%s): %d rows", preference, use_kl, len(rows))
        replay_set = None
        if replay is not None:
            steps = _stage_steps(tr["preference"], len(rows))
            replay_set = _replay_set(
                work,
                model_dir,
                device,
                instructions[: steps * int(replay["batch_size"])],
                replay,
                seeds["replay"],
            )
        last, h = _pref_stage(
            "pref",
            work,
            model_dir,
            last,
            rows,
            tr,
            seeds["pref"],
            device,
            callbacks,
            preference=preference,
            steering_ids=steering_ids,
            use_kl=use_kl,
            binding_weight=binding_weight,
            replay=replay,
            replay_rows=replay_set,
            label=label,
        )
        history += h

    with atomic_dir(out_dir) as tmp:
        for f in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy2(last / f, tmp / f)
        write_json(tmp / "training_config.json", record)
        with open(tmp / "metrics.jsonl", "w", encoding="utf-8") as fh:
            for row in history:
                fh.write(json.dumps(row, default=str) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    log_.info("adapter written to %s", out_dir)
    return out_dir
