"""Distributed training on CPU: MirroredStrategy over 2 logical CPUs, MultiWorkerMirroredStrategy over 2 processes.

Both go through ``edgetl train`` (the CLI) in fresh processes: logical devices and collective ops
must be configured before TensorFlow initialises. ``EDGETL_DISTRIBUTE=mirrored`` forces the
mirrored strategy that a multi-GPU machine would pick; ``TF_CONFIG`` with two workers selects
MultiWorkerMirroredStrategy. Each run covers both phases (head, then fine-tune), which is where a
strategy scope used to be entered twice ("'_GeneratorContextManager' object has no attribute 'args'").
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgetl.errors import UsageError
from edgetl.train import WorkerRole, cluster_role, plan_devices, requested_distribution

RUN_FILES = {"model.keras", "labels.txt", "config.json", "history.csv", "metrics.json", "curves.png", "confusion_matrix.png"}
TINY = ["--backbone", "tiny_cnn", "--weights", "none", "--strategy", "fine-tune", "--epochs", "2", "--fine-tune-epochs", "1",
        "--batch-size", "16", "--augment-views", "0", "--patience", "0"]

TWO_CPUS = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
from edgetl.cli import main
sys.exit(main(sys.argv[1:]))
"""
CLI = "import sys\nfrom edgetl.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "EDGETL_DISTRIBUTE")}
    env.update(extra)
    return env


def _phases(run: Path) -> list[str]:
    return [line.split(",")[0] for line in (run / "history.csv").read_text().splitlines()[1:]]


def test_mirrored_on_two_logical_cpus_runs_both_phases(image_folder, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", TWO_CPUS, "train", str(image_folder), *TINY, "--out", str(run)],
                          capture_output=True, text=True, timeout=180, env=_env(EDGETL_DISTRIBUTE="mirrored"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert RUN_FILES <= {p.name for p in run.iterdir()}
    m = json.loads((run / "metrics.json").read_text())
    assert m["device_plan"]["distribute"] == "mirrored" and m["device_plan"]["replicas"] == 2
    assert m["epochs_run"] == {"head": 2, "fine_tune": 1}
    assert _phases(run) == ["head", "head", "fine-tune"]
    assert "MirroredStrategy, 2 replicas in sync" in proc.stderr
    assert "distributed: mirrored, 2 replicas in sync" in proc.stdout


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _run_workers(tmp_path: Path, args: list[str], n: int = 2, timeout: float = 240, script: str = CLI,
                 **extra_env: str) -> tuple[list[str], list[Path]]:
    """``edgetl train ARGS`` as ``n`` local workers of one TF_CONFIG cluster on 127.0.0.1; (stdouts, TMPDIRs)."""
    ports = _free_ports(n)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs, scratch = [], []
    try:
        for i in range(n):
            tmp = tmp_path / f"tmp{i}"  # each worker's TMPDIR: where a non-chief writes its scratch run
            tmp.mkdir()
            scratch.append(tmp)
            env = _env(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}), TMPDIR=str(tmp),
                       **extra_env)
            out = open(tmp_path / f"w{i}.out", "w")
            err = open(tmp_path / f"w{i}.err", "w")
            procs.append((subprocess.Popen([sys.executable, "-c", script, "train", *args], stdout=out, stderr=err, env=env), out, err))
        deadline = time.monotonic() + timeout
        for p, out, err in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p, out, err in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            out.close()
            err.close()
    outs = [(tmp_path / f"w{i}.out").read_text() for i in range(n)]
    errs = [(tmp_path / f"w{i}.err").read_text() for i in range(n)]
    for i, (p, _, _) in enumerate(procs):
        assert p.returncode == 0, f"worker {i}:\n{errs[i][-3000:]}"
    return outs, scratch


def test_multi_worker_two_processes_chief_writes_the_run(image_folder, tmp_path):
    run = tmp_path / "run"
    outs, scratch = _run_workers(tmp_path, [str(image_folder), *TINY, "--out", str(run)])
    # the chief (worker 0) wrote the run; worker 1 trained in step and left nothing behind
    assert RUN_FILES <= {p.name for p in run.iterdir()}
    m = json.loads((run / "metrics.json").read_text())
    assert m["device_plan"]["distribute"] == "multi-worker" and m["device_plan"]["replicas"] == 2
    assert m["device_plan"]["task"] == "chief 0 of 2"
    assert m["epochs_run"] == {"head": 2, "fine_tune": 1} and _phases(run) == ["head", "head", "fine-tune"]
    assert not [p for p in scratch[1].iterdir() if p.name.startswith("edgetl-")]  # the worker's scratch run was deleted
    assert "worker 1 of 2 (only the chief writes the run directory)" in outs[1]
    assert "this process: chief 0 of 2" in outs[0]
    # synchronous data-parallel training: both processes end with the same model (same val loss)
    val = [next(line for line in o.splitlines() if line.startswith("val accuracy")) for o in outs]
    assert val[0] == val[1], val
    d = m["distributed"]  # fine-tuning on cached activations: each worker caches and trains on its own rows
    assert m["fine_tune_mode"] == "cached-activations"
    assert d["num_workers"] == 2 and d["sharded"] is True and d["fine_tune_sharded"] is True
    n_train = len(list((image_folder / "train").glob("*/*.png")))
    assert sum(w["train_images"] for w in d["per_worker"]) == n_train
    assert [w["fine_tune_images"] for w in d["per_worker"]] == [w["train_images"] for w in d["per_worker"]]


FE = ["--backbone", "tiny_cnn", "--weights", "none", "--strategy", "feature-extraction", "--epochs", "5", "--lr", "0.05",
      "--batch-size", "8", "--augment-views", "0", "--patience", "0", "--seed", "3"]


def test_multi_worker_feature_extraction_embeds_only_its_shard(image_folder, tmp_path):
    """Two workers each embed about half of the images and train the head data-parallel on their own
    embeddings; the run matches one worker's on the same data."""
    from edgetl.cli import main

    one = tmp_path / "one"
    assert main(["train", str(image_folder), *FE, "--out", str(one), "--quiet"]) == 0  # one process, in this one
    run = tmp_path / "run"
    outs, _ = _run_workers(tmp_path, [str(image_folder), *FE, "--out", str(run)], EDGETL_EMBED_CACHE=str(tmp_path / "cache2"))
    m, m1 = (json.loads((p / "metrics.json").read_text()) for p in (run, one))
    d = m["distributed"]
    assert d["num_workers"] == 2 and d["sharded"] is True and "distributed" not in m1
    per = d["per_worker"]
    assert [w["task"] for w in per] == [0, 1]
    n_train, n_val = len(list((image_folder / "train").glob("*/*.png"))), m1["val"]["total"]
    assert sum(w["train_images"] for w in per) == n_train and sum(w["val_images"] for w in per) == n_val
    assert all(w["train_images"] <= 0.55 * n_train for w in per), per
    assert all(w["embedded_views"] == w["train_images"] + w["val_images"] and w["seconds"] > 0 for w in per), per
    # each worker's cache holds only its own shard parts
    parts = {p.name for p in (tmp_path / "cache2").glob("*/*") if p.is_dir()}
    assert parts == {"train_v0.w0of2", "train_v0.w1of2", "val.w0of2", "val.w1of2"}, parts
    # the val set was gathered whole: same size, and every worker took the same number of epochs
    assert m["val"]["total"] == n_val and m["epochs_run"] == m1["epochs_run"]
    val = [next(line for line in o.splitlines() if line.startswith("val accuracy")) for o in outs]
    assert val[0] == val[1], val
    # Same embeddings (same frozen weights, seed and files), same global batch and epochs, only the rows of
    # each global batch differ (two shuffled halves instead of one shuffle): on these separable classes
    # both reach the same accuracy within one val image.
    print("val accuracy/loss: 2 workers", m["val_accuracy"], m["val_loss"], "1 worker", m1["val_accuracy"], m1["val_loss"])
    assert m1["val_accuracy"] >= 0.9  # the comparison means something: one worker learned the task
    assert abs(m["val_accuracy"] - m1["val_accuracy"]) <= 1 / n_val + 1e-9, (m["val_accuracy"], m1["val_accuracy"])
    assert abs(m["val_loss"] - m1["val_loss"]) <= 0.05, (m["val_loss"], m1["val_loss"])


def test_multi_worker_image_check_is_sharded(tmp_path):
    """Two workers each decode about half of the listed files at the start; both skip the same
    undecodable files with the same warning, and the split is the one-process run's."""
    from conftest import make_image_folder

    from edgetl.cli import main
    from edgetl.data import summarize_skipped

    data = make_image_folder(tmp_path / "data", n_train=9, n_val=3, split=False, size=16)
    (data / "alpha" / "alpha_all_004b.png").write_bytes(b"\x89PNG garbage")  # listed 6th: worker 1's share
    (data / "beta" / "beta_all_010b.jpg").write_bytes(b"not a jpeg")  # listed 13 + 12th: worker 0's share
    args = ["--backbone", "tiny_cnn", "--weights", "none", "--strategy", "feature-extraction", "--epochs", "1",
            "--batch-size", "8", "--augment-views", "0", "--patience", "0", "--seed", "3", "--val-split", "0.25"]
    one = tmp_path / "one"
    assert main(["train", str(data), *args, "--out", str(one), "--quiet"]) == 0  # one process, in this one
    run = tmp_path / "run"
    outs, _ = _run_workers(tmp_path, [str(data), *args, "--out", str(run)], EDGETL_EMBED_CACHE=str(tmp_path / "cache2"))
    c, c1 = (json.loads((p / "config.json").read_text()) for p in (run, one))
    assert c1["data"]["num_skipped"] == 2 and c["data"] == c1["data"]  # files, split hashes, counts, skipped files
    listed = 2 * 12 + 2
    per = json.loads((run / "metrics.json").read_text())["distributed"]["per_worker"]
    checked = [w["checked_images"] for w in per]
    assert sum(checked) == listed and all(k <= 0.55 * listed for k in checked), per
    warning = "warning: " + summarize_skipped((d["path"], d["reason"]) for d in c1["data"]["skipped"])
    logs = [outs[i] + (tmp_path / f"w{i}.err").read_text() for i in range(2)]
    for i, log in enumerate(logs):
        assert [line for line in log.splitlines() if "not decodable" in line] == [warning], log[-3000:]
        assert f"{'chief' if i == 0 else 'worker'} {i} of 2: checked its {checked[i]} of the {listed} listed files" in log
    sizes = [[line for line in log.splitlines() if " train / " in line and " val images" in line] for log in logs]
    assert len(sizes[0]) == 1 and sizes[0][0].split(",")[0] == sizes[1][0].split(",")[0], sizes  # same split on both


# No activation cache (cache_limit_mb 0, no CLI flag for it): the fine-tune phase streams the image files.
FT_ON_IMAGES = """
import sys
import edgetl.train
_train = edgetl.train.train
edgetl.train.train = lambda cfg, **kw: _train(cfg.replace(cache_limit_mb=0), **kw)
from edgetl.cli import main
sys.exit(main(sys.argv[1:]))
"""
FT = ["--backbone", "tiny_cnn", "--weights", "none", "--strategy", "fine-tune", "--epochs", "3", "--lr", "0.1", "--fine-tune-lr", "0.01",
      "--fine-tune-epochs", "2", "--batch-size", "8", "--augment-views", "0", "--patience", "0", "--seed", "3"]


def test_multi_worker_fine_tune_on_images_streams_only_its_shard(image_folder, tmp_path, monkeypatch):
    """Fine-tuning on images, two workers each stream about half of the train files (the rows they
    embedded) with the same steps per epoch; the run matches one worker's on the same data."""
    import edgetl.train
    from edgetl.cli import main

    one = tmp_path / "one"
    real = edgetl.train.train
    monkeypatch.setattr(edgetl.train, "train", lambda cfg, **kw: real(cfg.replace(cache_limit_mb=0), **kw))
    assert main(["train", str(image_folder), *FT, "--out", str(one), "--quiet"]) == 0  # one process, in this one
    run = tmp_path / "run"
    outs, _ = _run_workers(tmp_path, [str(image_folder), *FT, "--out", str(run)], script=FT_ON_IMAGES,
                           EDGETL_EMBED_CACHE=str(tmp_path / "cache2"))
    m, m1 = (json.loads((p / "metrics.json").read_text()) for p in (run, one))
    n_train, n_val = len(list((image_folder / "train").glob("*/*.png"))), m1["val"]["total"]
    d = m["distributed"]
    assert d["sharded"] is True and d["fine_tune_sharded"] is True, d
    per = [w["fine_tune_images"] for w in d["per_worker"]]
    assert sum(per) == n_train and all(k <= 0.55 * n_train for k in per), per
    for i in range(2):  # each worker's fine-tune input was its own shard of the files, as recorded (log: stderr)
        log = (tmp_path / f"w{i}.err").read_text()
        assert f"worker {i}: fine-tunes on its own {per[i]} of {n_train} train images" in log, log[-2000:]
        assert "on images" in log
    assert m["epochs_run"] == m1["epochs_run"] == {"head": 3, "fine_tune": 2}
    assert m["val"]["total"] == n_val
    val = [next(line for line in o.splitlines() if line.startswith("val accuracy")) for o in outs]
    assert val[0] == val[1], val  # synchronous: both workers end with the same model
    # Same initial weights (seed), files, global batch and epochs; the two runs differ only in which rows form
    # each global batch (two shuffled halves instead of one shuffle, the larger half dropping a file per epoch),
    # in both phases. On these separable classes that moves the val accuracy by at most two val images.
    print("val accuracy/loss: 2 workers", m["val_accuracy"], m["val_loss"], "1 worker", m1["val_accuracy"], m1["val_loss"])
    assert m1["val_accuracy"] >= 0.9  # the comparison means something: one worker learned the task
    assert abs(m["val_accuracy"] - m1["val_accuracy"]) <= 2 / n_val + 1e-9, (m["val_accuracy"], m1["val_accuracy"])


def _val_lines(log: str) -> list[str]:
    """Every epoch's val loss/accuracy as one worker logged them (``head epoch 1/3: ..., val_loss ...``)."""
    return [f"{line.split(':')[0]}: {line.split('val_loss')[1].split(' (')[0]}" for line in log.splitlines()
            if " epoch " in line and "val_loss" in line]


def test_multi_worker_fine_tune_on_cached_activations_trains_on_its_shard(image_folder, tmp_path):
    """Fine-tuning on cached activations (the default when the frozen part ends at one tensor): each
    worker caches the activations of its own train rows only and trains the head and the tail on them;
    the val rows are gathered, so both workers see the same val history and make the same keep/restore
    choice; the run matches one worker's on the same data."""
    from edgetl.cli import main

    one = tmp_path / "one"
    assert main(["train", str(image_folder), *FT, "--out", str(one), "--quiet"]) == 0  # one process, in this one
    run = tmp_path / "run"
    outs, _ = _run_workers(tmp_path, [str(image_folder), *FT, "--out", str(run)])
    m, m1 = (json.loads((p / "metrics.json").read_text()) for p in (run, one))
    assert m["fine_tune_mode"] == m1["fine_tune_mode"] == "cached-activations"
    n_train, n_val = len(list((image_folder / "train").glob("*/*.png"))), m1["val"]["total"]
    d = m["distributed"]
    assert d["sharded"] is True and d["fine_tune_sharded"] is True, d
    per = d["per_worker"]
    assert [w["task"] for w in per] == [0, 1]
    assert sum(w["train_images"] for w in per) == n_train and sum(w["val_images"] for w in per) == n_val, per
    assert all(w["train_images"] <= 0.55 * n_train and w["fine_tune_images"] == w["train_images"] for w in per), per
    assert all(w["embedded_views"] == w["train_images"] + w["val_images"] for w in per), per
    logs = [(tmp_path / f"w{i}.err").read_text() for i in range(2)]
    for i, log in enumerate(logs):  # each worker's store and fine-tune input were its own rows, as recorded
        assert f"worker {i}: cached the activations of its own {per[i]['train_images']} of {n_train}" in log, log[-2000:]
        assert f"worker {i}: fine-tunes on the cached activations of its own {per[i]['train_images']} of {n_train}" in log
    # the same val history (every epoch of both phases) and the same keep/restore choice on both workers
    hist = [_val_lines(log) for log in logs]
    assert len(hist[0]) == 5 and hist[0] == hist[1], hist
    chosen = [[line for line in o.splitlines() if line.startswith(("fine-tuned weights kept", "fine-tuning did not help"))] for o in outs]
    assert len(chosen[0]) == 1 and chosen[0] == chosen[1], chosen
    val = [next(line for line in o.splitlines() if line.startswith("val accuracy")) for o in outs]
    assert val[0] == val[1], val
    assert m["epochs_run"] == m1["epochs_run"] == {"head": 3, "fine_tune": 2} and m["val"]["total"] == n_val
    # as on images: only the rows of each global batch differ from one worker's run
    print("val accuracy/loss: 2 workers", m["val_accuracy"], m["val_loss"], "1 worker", m1["val_accuracy"], m1["val_loss"])
    assert m1["val_accuracy"] >= 0.9  # the comparison means something: one worker learned the task
    assert abs(m["val_accuracy"] - m1["val_accuracy"]) <= 2 / n_val + 1e-9, (m["val_accuracy"], m1["val_accuracy"])


def test_keras_private_names_of_the_multi_worker_fixes_exist():
    """The two Keras fixes in edgetl/train/distribute.py patch private Keras names: a Keras upgrade that
    renames one fails here, not silently in a multi-worker run."""
    from edgetl.train.distribute import keras_private_names

    names = keras_private_names()
    assert names and all(names.values()), names


def test_shard_rows_and_gather_cover_every_row_once():
    from edgetl.train.distribute import shard_rows

    for n, count in ((0, 2), (1, 2), (7, 2), (10, 3)):
        parts = [list(shard_rows(n, k, count)) for k in range(count)]
        assert sorted(sum(parts, [])) == list(range(n))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_val_chunks_line_up_with_every_workers_rows():
    """The sharded val pass gathers chunk by chunk: each chunk's rows of worker k are exactly worker k's
    rows of the whole val set in that range, so the gathered chunks put every row back in order."""
    from edgetl.train.activations import cache_plan, gather_rows, val_chunk
    from edgetl.train.distribute import shard_rows

    for n, chunk, count in ((12, 512, 2), (1000, 512, 3), (7, 4, 3), (5, 2, 4), (0, 512, 2)):
        step = val_chunk(chunk, count)
        assert step % count == 0 and step >= count
        for k in range(count):
            mine = [i for a in range(0, n, step) for i in range(a + k, min(n, a + step), count)]
            assert mine == list(shard_rows(n, k, count)), (n, chunk, count, k)
    assert gather_rows(512, 1) == 0 and gather_rows(512, 2) == 2 * 256 + 3 * 512

    class Cfg:
        cache_limit_mb, batch_size = 100, 32
    one, two = (cache_plan(Cfg, 1000, 10_000, 512, g)["transient_bytes"] for g in (0, gather_rows(512, 2)))
    assert two - one == 1000 * 2 * gather_rows(512, 2)  # the gathered val chunk's float16 copies are counted


def test_cluster_role_from_tf_config():
    def role(doc):
        return cluster_role({"TF_CONFIG": json.dumps(doc)})

    workers = {"worker": ["h:1", "h:2", "h:3"]}
    assert cluster_role({}) is None
    assert role({"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 0}}) is None  # one worker: plain run
    assert role({"cluster": workers, "task": {"type": "worker", "index": 0}}) == WorkerRole(0, 3, True)
    assert role({"cluster": workers, "task": {"type": "worker", "index": 2}}) == WorkerRole(2, 3, False)
    with_chief = {"chief": ["c:1"], "worker": ["h:1"]}
    assert role({"cluster": with_chief, "task": {"type": "chief", "index": 0}}) == WorkerRole(0, 2, True)
    assert role({"cluster": with_chief, "task": {"type": "worker", "index": 0}}) == WorkerRole(1, 2, False)
    with pytest.raises(UsageError, match="TF_CONFIG"):
        cluster_role({"TF_CONFIG": "{not json"})
    with pytest.raises(UsageError, match="not in its cluster"):
        role({"cluster": workers, "task": {"type": "worker", "index": 5}})
    with pytest.raises(UsageError, match="not in its cluster"):
        role({"cluster": workers, "task": {"type": "ps", "index": 0}})


def test_distribution_choice():
    assert requested_distribution({}) == "auto"
    assert requested_distribution({"EDGETL_DISTRIBUTE": "Mirrored"}) == "mirrored"
    with pytest.raises(UsageError, match="EDGETL_DISTRIBUTE"):
        requested_distribution({"EDGETL_DISTRIBUTE": "tpu"})
    assert plan_devices([], "mirrored").distribute == "mirrored"
    assert plan_devices(["/gpu:0", "/gpu:1"], "none").distribute == "none"
    assert plan_devices([], "auto", WorkerRole(0, 2, True)).distribute == "multi-worker"
    with pytest.raises(UsageError, match="TF_CONFIG"):
        plan_devices([], "multi-worker", None)


def test_bad_distribution_settings_are_one_line_errors(image_folder, tmp_path, capsys, monkeypatch):
    from edgetl.cli import main

    for key, value, needle in (("EDGETL_DISTRIBUTE", "tpu", "EDGETL_DISTRIBUTE must be one of"),
                               ("TF_CONFIG", "{oops", "TF_CONFIG is not a valid cluster description")):
        monkeypatch.setenv(key, value)
        code = main(["train", str(image_folder), *TINY, "--out", str(tmp_path / "r")])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "r").exists()
        monkeypatch.delenv(key)


def test_distributed_train_data_takes_the_same_steps_on_every_shard():
    """Unequal shards (7 and 5 rows) give the same number of batches per epoch: the smallest shard's."""
    import tensorflow as tf

    from edgetl.train.distribute import distributed_train_data

    strategy = tf.distribute.get_strategy()  # one replica: the per-worker dataset as it is built
    epochs = []
    for rows in (7, 5):
        ds, steps = distributed_train_data(strategy, 2, 5, 4, lambda b, rows=rows: tf.data.Dataset.range(rows).batch(b))
        epochs.append((steps, [[len(b) for b in ds] for _ in range(2)]))  # two epochs
    # 2 steps of the per-replica batch 4 (global 4 over 1 replica) on both shards, every epoch; each step
    # is a batch of the shard's own rows (the last one partial)
    assert epochs == [(2, [[4, 3], [4, 3]]), (2, [[4, 1], [4, 1]])], epochs


class _FakeCluster:
    """``count`` threads standing in for workers: ``gather(k)`` is worker k's all-gather of its
    :func:`shard_rows` part (what :func:`gather_shards` returns on every worker), in lockstep."""

    def __init__(self, count: int):
        import threading

        self.count, self.parts, self.calls = count, [None] * count, [0] * count
        self.barrier = threading.Barrier(count, timeout=30)

    def gather(self, k: int):
        import numpy as np

        def gather(local, n):
            self.calls[k] += 1
            self.parts[k] = np.asarray(local)
            self.barrier.wait()
            out = np.empty((n, *self.parts[k].shape[1:]), self.parts[k].dtype)
            for j in range(self.count):
                out[j::self.count] = self.parts[j]
            self.barrier.wait()  # every worker has read the parts before the next gather replaces them
            return out
        return gather

    def run(self, fn):
        """``fn(k)`` on every worker at once: (results, errors) by worker."""
        from concurrent.futures import ThreadPoolExecutor

        def safe(k):
            try:
                return fn(k), None
            except Exception as exc:  # noqa: BLE001 - compared by the test
                return None, exc
        with ThreadPoolExecutor(self.count) as pool:
            out = list(pool.map(safe, range(self.count)))
        return [o[0] for o in out], [o[1] for o in out]


def _sharded_load(root, count, **kw):
    from edgetl.data import CheckShard, load_dataset
    from edgetl.train.distribute import combine_check

    cluster = _FakeCluster(count)

    def worker(k):
        combine = lambda names, local: combine_check(names, local, k, count, cluster.gather(k))  # noqa: E731
        return load_dataset(root, check_shard=CheckShard(k, count, combine), **kw)
    return cluster, *cluster.run(worker)


def test_sharded_image_check_gives_one_process_split_and_skipped_list(tmp_path):
    """Each worker decodes only its strided share of the listed files; the gathered results give every
    worker the single-process split, skipped list (the right reason for the right file) and warning."""
    from conftest import make_image_folder
    from PIL import Image

    from edgetl.data import load_dataset, summarize_skipped

    flat = make_image_folder(tmp_path / "flat", n_train=7, n_val=3, split=False, size=16)
    (flat / "alpha" / "alpha_all_004b.png").write_bytes(b"\x89PNG garbage")
    Image.new("RGB", (30, 30), "red").save(flat / "beta" / "beta_all_001b.jpg")
    data = (flat / "beta" / "beta_all_001b.jpg").read_bytes()
    (flat / "beta" / "beta_all_001b.jpg").write_bytes(data[:len(data) // 3])  # truncated: another reason
    (flat / "beta" / "bäd: ünïcode.png").write_bytes(b"nope")
    split = make_image_folder(tmp_path / "split", n_train=5, n_val=3, n_test=2, size=16)
    (split / "val" / "beta" / "broken.png").write_bytes(b"x")
    (split / "test" / "alpha" / "broken.png").write_bytes(b"y")
    for root, kw in ((flat, {"val_split": 0.3, "seed": 3}), (split, {})):
        one = load_dataset(root, workers=2, **kw)
        listed = one.checked
        assert listed == sum(len(s.samples) + len(s.skipped) for s in (one.train, one.val, one.test) if s)
        assert len(one.skipped) == (3 if root == flat else 2) and len({r for _, r in one.skipped}) >= 2, one.skipped
        for count in (2, 3):
            cluster, sets, errors = _sharded_load(root, count, workers=1, **kw)
            assert errors == [None] * count, errors
            for ds in sets:
                assert ds.fingerprint() == one.fingerprint()  # files, split and skipped hashes, counts
                assert (ds.train.paths, ds.val.paths, ds.skipped) == (one.train.paths, one.val.paths, one.skipped)
                assert summarize_skipped(ds.skipped) == summarize_skipped(one.skipped)
            assert [ds.checked for ds in sets] == [len(range(k, listed, count)) for k in range(count)]
            assert cluster.calls == [3] * count  # list check, reason lengths, the bad files' reasons


def test_sharded_image_check_collectives_and_different_listings():
    """No bad file: two gathers only; workers listing different files all fail with the same one-line
    error (none is left waiting in a collective)."""
    from edgetl.errors import EdgetlError
    from edgetl.train.distribute import combine_check, shard_rows

    names = [f"c/{i}.png" for i in range(9)]
    cluster = _FakeCluster(2)
    out, errors = cluster.run(lambda k: combine_check(names, [None] * len(shard_rows(9, k, 2)), k, 2, cluster.gather(k)))
    assert out == [[None] * 9] * 2 and errors == [None, None] and cluster.calls == [2, 2]
    for other in (names[:8], names[:8] + ["c/x.png"]):
        listings = [names, other]
        cluster = _FakeCluster(2)
        out, errors = cluster.run(lambda k: combine_check(listings[k], [None] * len(shard_rows(len(listings[k]), k, 2)), k, 2,
                                                          cluster.gather(k)))
        assert all(isinstance(e, EdgetlError) for e in errors) and str(errors[0]) == str(errors[1]), errors
        assert "the workers list different image files" in str(errors[0]) and "\n" not in str(errors[0])
        assert cluster.calls == [1, 1]
