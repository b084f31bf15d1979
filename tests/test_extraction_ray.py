"""Extraction on a real local Ray instance: the same store bytes as one process, whatever the worker count;
a worker killed mid-shard costs that shard only; a killed driver resumes without Ray; errors stay one line."""
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mads_fast.cluster import check_shared
from mads_fast.errors import InputError
from mads_fast.extraction import extract
from mads_fast.extraction.on_ray import plan_workers

pytestmark = pytest.mark.slow

OPTIONS = dict(layers=3, max_length=96, shard_size=8, tokens_per_batch=256, quant="int8", progress=False)
STAMPS = ("created", "created_at", "finished", "finished_at", "updated_at")


def _slice(src, dst, n):
    with open(src, encoding="utf-8") as fh:
        dst.write_text("".join(next(fh) for _ in range(n)), encoding="utf-8")
    return dst


def _files(store: Path) -> dict:
    """Every file of a store by name: bytes, the manifest without its timestamps."""
    out = {}
    for path in sorted(store.iterdir()):
        if path.name == "manifest.json":
            manifest = json.loads(path.read_text())
            out[path.name] = {k: v for k, v in manifest.items() if k not in STAMPS}
        else:
            out[path.name] = path.read_bytes()
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, alpaca_path):
    return _slice(alpaca_path, tmp_path_factory.mktemp("ray_corpus") / "a.jsonl", 60)


@pytest.fixture(scope="module")
def single(tmp_path_factory, corpus, tiny_model_dir):
    """The single-process store every Ray store must equal."""
    store = tmp_path_factory.mktemp("single") / "store"
    extract(corpus, store, model=tiny_model_dir, **OPTIONS)
    return _files(store)


@pytest.mark.parametrize("workers", [1, 2])
def test_ray_store_is_byte_identical_to_one_process(ray_local, corpus, tiny_model_dir, single, tmp_path, workers):
    store = tmp_path / "store"
    stats = extract(corpus, store, model=tiny_model_dir, ray="local", workers=workers, **OPTIONS)
    assert stats.n_shards_written == 8 and stats.extra["workers"] == workers and stats.tokens > 0
    got = _files(store)
    assert sorted(got) == sorted(single)
    for name in single:
        assert got[name] == single[name], name
    assert got["manifest.json"]["complete"] is True
    assert not [p for p in store.parent.iterdir() if p.name.startswith(".mads-probe")]


@pytest.mark.parametrize("fault", ["kill@3", "raykill@5"])
def test_worker_killed_mid_shard_costs_only_that_shard(ray_local, corpus, tiny_model_dir, single, tmp_path,
                                                       monkeypatch, caplog, fault):
    monkeypatch.setenv("MADS_FAST_FAULT", fault)
    store = tmp_path / "store"
    with caplog.at_level(logging.WARNING, logger="mads_fast"):
        stats = extract(corpus, store, model=tiny_model_dir, ray="local", workers=2, **OPTIONS)
    shard = int(fault.split("@")[1])
    assert (store / f".fault-{fault.replace('@', '-')}").exists(), "the fault must have fired"
    assert f"died while writing shard {shard}" in caplog.text
    assert stats.n_shards_written == 8  # every shard written once, the killed one redone
    (store / f".fault-{fault.replace('@', '-')}").unlink()
    got = _files(store)
    assert sorted(got) == sorted(single) and all(got[n] == single[n] for n in single)
    assert not [p.name for p in store.iterdir() if p.name.startswith(".tmp")], "no temp file is left"


def test_killed_driver_resumes_without_ray(corpus, tiny_model_dir, single, tmp_path):
    store = tmp_path / "store"
    args = [sys.executable, "-m", "mads_fast.cli", "extract", str(corpus), "--store", str(store), "--model",
            str(tiny_model_dir), "--layers", "3", "--max-length", "96", "--shard-size", "8",
            "--tokens-per-batch", "256", "--quant", "int8", "--quiet"]
    proc = subprocess.Popen(args + ["--ray", "local", "--workers", "1"], env=dict(os.environ, MADS_FAST_FAULT=""))
    deadline = time.time() + 300
    while not list(store.glob("shard-*.done")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(store.glob("shard-*.done")))
    assert 1 <= done < 8, f"the kill must land mid-run (done shards: {done} of 8)"
    subprocess.run(args, check=True, timeout=600)
    time.sleep(1)  # a worker of the killed driver would still be writing now; it must not be
    got = _files(store)
    assert sorted(got) == sorted(single) and all(got[n] == single[n] for n in single)


def test_worker_input_error_is_the_one_line_error(ray_local, tmp_path, tiny_model_dir, corpus):
    """A record that fails in a worker surfaces as the single-process error: file, line, problem."""
    data = tmp_path / "bad.jsonl"
    lines = corpus.read_text().splitlines(keepends=True)
    data.write_text("".join(lines))
    from mads_fast.data import read_records

    rs = read_records(data)
    # change record 20 after reading: the worker that loads shard 2 finds different bytes under its id
    lines[20] = lines[20].replace('"instruction": "', '"instruction": "X', 1)
    data.write_text("".join(lines))
    with pytest.raises(InputError) as err:
        extract(rs, tmp_path / "store", model=tiny_model_dir, ray="local", workers=2, **OPTIONS)
    single_error = None
    try:
        extract(rs, tmp_path / "store1", model=tiny_model_dir, **OPTIONS)
    except InputError as exc:
        single_error = str(exc)
    assert str(err.value) == single_error and "line 21" in single_error and "\n" not in single_error


def test_worker_logs_reach_the_driver_log_file(ray_local, corpus, tiny_model_dir, tmp_path):
    log_file = tmp_path / "run.log"
    code = subprocess.run([sys.executable, "-m", "mads_fast.cli", "extract", str(corpus), "--store",
                           str(tmp_path / "store"), "--model", str(tiny_model_dir), "--layers", "3", "--max-length",
                           "96", "--shard-size", "8", "--quiet", "--ray", "local", "--workers", "2",
                           "--log-file", str(log_file)], capture_output=True, text=True, timeout=600)
    assert code.returncode == 0, code.stderr
    text = log_file.read_text()
    assert "[worker 0] model loaded" in text and "[worker 1] model loaded" in text


def test_ray_without_the_extra_is_a_one_line_error(corpus, tmp_path):
    code = ("import sys, runpy; sys.modules['ray'] = None; sys.argv = ['mads-fast', 'extract', %r, '--store', %r, "
            "'--ray', 'local']; runpy.run_module('mads_fast.cli', run_name='__main__')") % (str(corpus), str(tmp_path / "s"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip() == 'mads-fast: error: --ray: Ray is not installed; install Ray with: pip install "mads-fast[ray]"'
    assert not (tmp_path / "s").exists()


def test_worker_plan_and_shared_folder_check():
    assert plan_workers({"CPU": 2}, None, None) == (1, 0.0, 2)
    assert plan_workers({"CPU": 2}, 2, None) == (2, 0.0, 1)
    assert plan_workers({"CPU": 16, "GPU": 4}, None, None) == (4, 1.0, None)
    assert plan_workers({"CPU": 16, "GPU": 1}, None, 0.5) == (2, 0.5, None)
    with pytest.raises(InputError, match="gpus_per_worker: asks 1 GPUs per worker but the Ray cluster has 0.5"):
        plan_workers({"CPU": 4, "GPU": 0.5}, None, 1)
    probe = Path("/shared/store/.mads-probe-x")
    check_shared(probe, [("10.0.0.1", True), ("10.0.0.1", True)], "the store's folder")
    with pytest.raises(InputError, match=r"store: the store's folder /shared/store is not visible from the Ray "
                                         r"workers on 10.0.0.2; put it on a filesystem every node shares"):
        check_shared(probe, [("10.0.0.1", True), ("10.0.0.2", False), ("10.0.0.2", False)], "the store's folder")


def test_bad_worker_counts_fail_before_any_work(ray_local, corpus, tmp_path):
    for kwargs, param in ((dict(workers=0), "workers"), (dict(workers=1.5), "workers"),
                          (dict(gpus_per_worker=-1), "gpus_per_worker")):
        with pytest.raises(InputError, match=f"^{param}: "):
            extract(corpus, tmp_path / "s", ray="local", **kwargs, progress=False)
    assert not (tmp_path / "s").exists()
