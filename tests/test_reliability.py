"""Nothing lost when training stops: Ctrl-C, divergence, resume; untrusted checkpoints;
atomic writes; safe report paths and cells."""

from __future__ import annotations

import ast
import csv
import hashlib
import os
import pickle
import signal
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import deepvibe.training.train as train_module
from conftest import small_config
from deepvibe.cli import app
from deepvibe.errors import CheckpointError, DeepVibeError, TrainingDiverged
from deepvibe.fileio import (
    atomic_folder,
    atomic_path,
    neutralise_formula,
    path_inside,
    safe_path_component,
    write_csv_atomic,
    write_text_atomic,
)
from deepvibe.training.checkpoint import load_checkpoint
from deepvibe.training.train import train

# The toy world of conftest: 400 users x 2 weeks, 10% validation -> 720 training rows,
# batch 64 -> 12 steps per epoch.
STEPS_PER_EPOCH = 12
SETS = {"train.epochs": 3, "train.snapshot_every": 1, "model.dropout": 0.1}


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.state_dict().values()]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _patch_loss(monkeypatch: pytest.MonkeyPatch, at_call: int, action) -> list[int]:
    """Run ``action(parts)`` on the ``at_call``-th (1-based) loss of the run; return a counter."""
    calls = [0]
    original = train_module.vae_loss

    def wrapped(*args, **kwargs):
        parts = original(*args, **kwargs)
        calls[0] += 1
        if calls[0] == at_call:
            return action(parts) or parts
        return parts

    monkeypatch.setattr(train_module, "vae_loss", wrapped)
    return calls


def _sigint(times: int = 1):
    def action(parts):
        for _ in range(times):
            os.kill(os.getpid(), signal.SIGINT)  # delivered to the handler train() installed
        return parts

    return action


def test_ctrl_c_mid_epoch_saves_a_snapshot_that_resumes_exactly(
    toy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = toy_dir / "data"
    straight = train(small_config(tmp_path / "a", data, **SETS), progress=False)
    cfg = small_config(tmp_path / "b", data, **SETS)
    stop_at = STEPS_PER_EPOCH + 5  # epoch 2, batch 5
    _patch_loss(monkeypatch, stop_at, _sigint())
    before = signal.getsignal(signal.SIGINT)
    stopped = train(cfg, progress=False)
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    assert stopped.interrupted
    assert stopped.step == stop_at  # the step in flight was finished, no more
    assert stopped.snapshot == cfg.snapshots_dir / "last.pth"
    ck = load_checkpoint(stopped.snapshot)
    assert ck.epoch == 1 and ck.step == stop_at
    assert ck.resume_state is not None and ck.resume_state["batch"] == 5
    monkeypatch.undo()
    resumed = train(cfg, resume=stopped.snapshot, progress=False)
    assert not resumed.interrupted and resumed.step == straight.step
    for a, b in zip(_weights(straight.model), _weights(resumed.model), strict=True):
        assert torch.equal(a, b)
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]


def test_sigterm_is_a_graceful_stop_too(
    toy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = small_config(tmp_path, toy_dir / "data", **SETS)

    def sigterm(parts):
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    _patch_loss(monkeypatch, 4, sigterm)
    result = train(cfg, progress=False, write_files=True)
    assert signal.getsignal(signal.SIGTERM) is before
    assert result.interrupted and result.step == 4
    ck = load_checkpoint(cfg.snapshots_dir / "last.pth")
    assert ck.epoch == 0 and ck.step == 4 and ck.resume_state["batch"] == 4


def test_second_ctrl_c_stops_at_once_and_keeps_last_epoch_snapshot(
    toy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = small_config(tmp_path, toy_dir / "data", **SETS)
    _patch_loss(monkeypatch, STEPS_PER_EPOCH + 3, _sigint(times=2))
    result = train(cfg, progress=False)
    assert result.interrupted and result.epochs_done == 1
    ck = load_checkpoint(cfg.snapshots_dir / "last.pth")
    assert ck.epoch == 1 and ck.resume_state is None  # nothing half-stepped was saved
    assert result.snapshot == cfg.snapshots_dir / "last.pth"


def test_cli_ctrl_c_then_resume_finishes_the_run(
    toy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").symlink_to(toy_dir / "data")
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        "data:\n  max_tracks: 1000\nmodel:\n  hidden: [64]\n  latent: 16\n"
        "train:\n  epochs: 3\n  batch_size: 64\n"
    )
    _patch_loss(monkeypatch, STEPS_PER_EPOCH + 4, _sigint())
    runner = CliRunner()
    res = runner.invoke(app, ["train", "-c", str(cfg_file)])
    assert res.exit_code == 130, res.output
    assert "resume with --resume models/snapshots/last.pth" in res.stderr
    assert "Traceback" not in res.output
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(
        app, ["train", "-c", str(cfg_file), "--resume", "models/snapshots/last.pth"]
    )
    assert res.exit_code == 0, res.output
    assert "trained 3 epochs" in res.stdout
    log_rows = (tmp_path / "logs" / "hybrid_training.log").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in log_rows] == ["1", "2", "3"]


def test_cli_ctrl_c_before_any_snapshot_says_nothing_to_resume(
    toy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").symlink_to(toy_dir / "data")

    def interrupt(parts):
        raise KeyboardInterrupt

    _patch_loss(monkeypatch, 2, interrupt)
    res = CliRunner().invoke(
        app, ["train", "--set", "model.hidden=[32]", "--set", "model.latent=8"]
    )
    assert res.exit_code == 130
    assert "nothing to resume" in res.stderr
    assert not (tmp_path / "models" / "snapshots" / "last.pth").exists()


def _nan(parts):
    return replace(parts, total=parts.total * float("nan"))


def test_nan_loss_names_the_step_and_keeps_last_good_files(
    toy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = small_config(tmp_path, toy_dir / "data", **SETS)
    train(cfg, progress=False, stop_after_epoch=1)
    last, best = cfg.snapshots_dir / "last.pth", cfg.best_checkpoint_path
    hashes = (_sha(last), _sha(best))
    _patch_loss(monkeypatch, 3, _nan)  # the 3rd step after resuming: step 15 of the run
    with pytest.raises(TrainingDiverged) as err:
        train(cfg, resume=last, progress=False)
    message = str(err.value)
    assert f"at step {STEPS_PER_EPOCH + 3} (epoch 2, batch 3 of {STEPS_PER_EPOCH})" in message
    assert str(last) in message
    assert (_sha(last), _sha(best)) == hashes  # nothing overwritten
    assert load_checkpoint(last).epoch == 1


def test_weights_turning_nan_stop_before_they_are_saved(
    toy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = small_config(tmp_path, toy_dir / "data", **SETS)
    original = torch.optim.Adam.step
    steps = [0]

    def poisoned_step(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        steps[0] += 1
        if steps[0] == STEPS_PER_EPOCH:  # the last step of epoch 1: the loss never sees it
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", poisoned_step)
    with pytest.raises(TrainingDiverged, match="weights became NaN or infinite during epoch 1"):
        train(cfg, progress=False)
    assert not (cfg.snapshots_dir / "last.pth").exists()
    assert not cfg.best_checkpoint_path.exists()


def test_cli_huge_learning_rate_diverges_with_one_line(
    toy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").symlink_to(toy_dir / "data")
    res = CliRunner().invoke(
        app,
        [
            "train",
            "--set",
            "model.hidden=[32]",
            "--set",
            "model.latent=8",
            "--set",
            "train.lr=1e12",
        ],
    )
    assert res.exit_code == 1
    err = res.stderr.strip().splitlines()[-1]
    assert err.startswith("error: loss became") and "at step" in err and "train.lr" in err
    assert "Traceback" not in res.output


# ----------------------------------------------------------------------------- checkpoints


class _TouchOnUnpickle:
    """Unpickling this object opens (creates) a marker file: stands in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_checkpoints_are_refused_without_running_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    # Control: a plain unpickler really would create the marker.
    pickle.loads(pickle.dumps(_TouchOnUnpickle(tmp_path / "control")))
    assert (tmp_path / "control").exists()

    zipped = tmp_path / "evil.pth"
    torch.save({"format": "deepvibe-checkpoint", "x": _TouchOnUnpickle(marker)}, zipped)
    legacy = tmp_path / "evil_legacy.pth"
    legacy.write_bytes(pickle.dumps(_TouchOnUnpickle(marker), protocol=2))
    for path in (zipped, legacy):
        with pytest.raises(CheckpointError, match="refused to load"):
            load_checkpoint(path)
    assert not marker.exists()
    res = CliRunner().invoke(app, ["train", "--resume", str(zipped)])
    assert res.exit_code == 1
    assert res.stderr.startswith(f"error: {zipped}: refused to load: it refers to ")
    assert "open, which could run code" in res.stderr
    assert not marker.exists()


@pytest.fixture(scope="module")
def good_checkpoint(toy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ck")
    cfg = small_config(root, toy_dir / "data", **{"train.epochs": 1})
    train(cfg, progress=False)
    return cfg.snapshots_dir / "last.pth"


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda good: b"", "checkpoint file is empty"),
        (lambda good: good[: len(good) // 2], "not a readable checkpoint"),
        (lambda good: b"user_id,week\nu1,1\n", "not a readable checkpoint"),
        (lambda good: os.urandom(64), "checkpoint"),
    ],
    ids=["empty", "truncated", "csv-text", "random-bytes"],
)
def test_broken_checkpoint_files_give_one_clear_error(
    good_checkpoint: Path, tmp_path: Path, make, expected: str
) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(make(good_checkpoint.read_bytes()))
    with pytest.raises(CheckpointError, match=expected) as err:
        load_checkpoint(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_checkpoint_with_foreign_or_inconsistent_payload(good_checkpoint: Path, tmp_path: Path):
    raw = torch.load(good_checkpoint, weights_only=True)
    cases = {
        "other": ({"weights": torch.zeros(3)}, "not a deepvibe checkpoint"),
        "version": ({**raw, "version": 99}, "format version 99"),
        "missing": ({k: v for k, v in raw.items() if k != "track_ids"}, "lacks track_ids"),
        "ids": ({**raw, "track_ids": raw["track_ids"][:-1]}, "track ids for"),
        "arch": ({**raw, "arch": {**raw["arch"], "latent": 3}}, "do not match its architecture"),
        "types": ({**raw, "feature_mean": "oops"}, "malformed"),
        "nan": (
            {**raw, "model_state": {k: v * float("nan") for k, v in raw["model_state"].items()}},
            "NaN or infinite weights",
        ),
    }
    for name, (payload, expected) in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save(payload, path)
        with pytest.raises(CheckpointError, match=expected):
            load_checkpoint(path)


def test_checkpoint_write_failure_keeps_previous_file(
    good_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deepvibe.training import checkpoint as ck_module

    target = tmp_path / "last.pth"
    target.write_bytes(good_checkpoint.read_bytes())
    before = _sha(target)
    ck = load_checkpoint(target)

    def disk_full(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck_module.torch, "save", disk_full)
    with pytest.raises(CheckpointError, match="No space left on device"):
        ck_module.save_checkpoint(
            target, ck.model, config=ck.config, epoch=2, step=0, track_ids=ck.track_ids,
            scaler=ck.scaler, track_features=ck.track_features,
        )  # fmt: skip
    assert _sha(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # no temp file left behind


# ----------------------------------------------------------------------------- atomic writes


def test_atomic_path_keeps_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "report.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert list(tmp_path.iterdir()) == [target]
    write_text_atomic(target, "new\n")
    assert target.read_text() == "new\n"


def test_atomic_folder_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    """A failed writer leaves no folder and no temporary one; a finished one appears with all
    its files; where another writer finished first, its folder is kept."""
    target = tmp_path / "index"
    with pytest.raises(RuntimeError), atomic_folder(target) as tmp:
        (tmp / "a.npy").write_bytes(b"half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_folder(target) as tmp:
        (tmp / "a.npy").write_bytes(b"first")
        (tmp / "b.npy").write_bytes(b"second")
        assert not target.exists()  # nothing there until the block ends
    assert sorted(p.name for p in target.iterdir()) == ["a.npy", "b.npy"]
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~mask  # not mkdtemp's 0700
    with atomic_folder(target) as tmp:
        (tmp / "a.npy").write_bytes(b"another")
    assert (target / "a.npy").read_bytes() == b"first"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_path_reports_unwritable_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DeepVibeError, match="cannot create the output folder"):
        write_text_atomic(blocker / "sub" / "out.txt", "x")


_WRITERS = {"to_csv", "to_parquet", "to_json", "write_text", "write_bytes"}
_ARRAY_SAVERS = {"save", "savez", "savez_compressed"}  # torch.save, np.save...


def _unsafe_writes(source: str) -> list[int]:
    """Line numbers of file writes that are not inside ``with atomic_path/atomic_open/
    atomic_folder``."""
    tree = ast.parse(source)
    buffers = {
        target.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Call)
        and getattr(node.value.func, "attr", getattr(node.value.func, "id", ""))
        in {"StringIO", "BytesIO"}
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    bad: list[int] = []

    def visit(node: ast.AST, atomic: bool) -> None:
        if isinstance(node, ast.With):
            inside = atomic or any(
                isinstance(item.context_expr, ast.Call)
                and getattr(
                    item.context_expr.func, "id", getattr(item.context_expr.func, "attr", "")
                )
                in {"atomic_path", "atomic_open", "atomic_folder"}
                for item in node.items
            )
            for child in node.body:
                visit(child, inside)
            return
        if isinstance(node, ast.Call) and not atomic:
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            first = node.args[0] if node.args else None
            to_buffer = isinstance(first, ast.Name) and first.id in buffers
            owner = getattr(getattr(node.func, "value", None), "id", "")
            saver = name in _ARRAY_SAVERS and owner in {"torch", "np", "numpy"}
            if (name in _WRITERS or saver) and not to_buffer:
                bad.append(node.lineno)
            if name == "open" and len(node.args) > 1:
                mode = node.args[1]
                if isinstance(mode, ast.Constant) and set(str(mode.value)) & set("wax+"):
                    bad.append(node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child, atomic)

    visit(tree, False)
    return bad


def test_every_writer_in_the_package_is_atomic() -> None:
    src = Path(__file__).resolve().parents[1] / "src" / "deepvibe"
    offenders = {}
    for path in sorted(src.rglob("*.py")):
        if path.name == "fileio.py":  # defines the atomic helpers themselves
            continue
        lines = _unsafe_writes(path.read_text(encoding="utf-8"))
        if lines:
            offenders[str(path.relative_to(src))] = lines
    assert offenders == {}, f"non-atomic writes (use deepvibe.fileio helpers): {offenders}"


def test_the_writer_check_can_fail() -> None:
    assert _unsafe_writes("frame.to_csv(path)\n") == [1]
    assert _unsafe_writes("open(p, 'w').write('x')\n") == [1]
    assert _unsafe_writes("torch.save(state, path)\n") == [1]
    assert _unsafe_writes("with atomic_path(p) as tmp:\n    frame.to_csv(tmp)\n") == []
    assert _unsafe_writes("buf = io.StringIO()\nframe.to_csv(buf)\n") == []


# ----------------------------------------------------------------------------- report safety


@pytest.mark.parametrize(
    "user",
    ["../../etc/passwd", "..", ".", "/abs/path", "a/../../b", "..\\..\\win", "x\x00y", "", "CON"],
)
def test_user_ids_cannot_leave_the_reports_folder(tmp_path: Path, user: str) -> None:
    base = tmp_path / "recommendations"
    part = safe_path_component(user)
    assert "/" not in part and "\\" not in part and part not in {"", ".", ".."}
    assert part.upper() != "CON"
    target = path_inside(base, part, f"{part}_1_standard.csv")
    assert base.resolve() in target.parents


def test_path_inside_refuses_escapes(tmp_path: Path) -> None:
    with pytest.raises(DeepVibeError, match="refusing to write outside"):
        path_inside(tmp_path / "recommendations", "..", "elsewhere.csv")
    with pytest.raises(DeepVibeError):
        path_inside(tmp_path / "recommendations", "/etc/passwd")


def test_long_user_ids_stay_distinct() -> None:
    a, b = safe_path_component("u" * 300 + "a"), safe_path_component("u" * 300 + "b")
    assert a != b and len(a) <= 100 and len(b) <= 100


@pytest.mark.parametrize(
    "cell", ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx", "＝1+1"]
)
def test_formula_like_cells_are_neutralised(tmp_path: Path, cell: str) -> None:
    import pandas as pd

    safe = neutralise_formula(cell)
    assert isinstance(safe, str) and safe.startswith("'") and safe[1:] == cell
    out = tmp_path / "r.csv"
    write_csv_atomic(pd.DataFrame({"track_name": [safe]}), out)
    with open(out, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    assert len(rows) == 2 and len(rows[1]) == 1  # still one cell: no row or column split
    assert rows[1][0].startswith("'")  # the cell a spreadsheet sees is text
    assert rows[1][0][1:].replace("\n", "\r") == cell.replace("\n", "\r")


def test_carriage_return_in_a_cell_cannot_start_a_new_row(tmp_path: Path) -> None:
    import pandas as pd

    out = tmp_path / "r.csv"
    write_csv_atomic(pd.DataFrame({"name": ["ok\r=1+1", "b"], "n": [1, 2]}), out)
    with open(out, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows == [["name", "n"], ["ok\n=1+1", "1"], ["b", "2"]]


def test_plain_cells_pass_unchanged() -> None:
    for cell in ("Song 2", "Sigur Rós", "", 3, -1.5, None):
        assert neutralise_formula(cell) == cell
