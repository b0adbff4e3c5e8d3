"""Checkpoints that cannot hurt: crafted, damaged and unsigned files are one clear error, memory stays bounded."""

import io
import logging
import tracemalloc
import zipfile

import numpy as np
import pytest

from coordinator import checkpoint as ckpt
from coordinator import runs
from lenet import npzfile
from lenet.config import TrainConfig
from lenet.model import init_params
from lenet.optim import SGD
from lenet.status import StorageError, UsageError

KEY = b"k" * 32
BOUND = 16 << 20  # peak Python allocation allowed while refusing a file: far below every claim below
RUN = runs.identity(TrainConfig(), 8, {"train": "ab"})
EPOCH = {"epoch": 1, "samples": 4, "loss": 0.3, "train_accuracy": 0.5, "test_accuracy": 0.75}


def good(step: int = 5) -> ckpt.Checkpoint:
    params = init_params(0)
    meta = {"config": TrainConfig().to_dict(), "num_shards": 8, "data_checksums": {"train": "ab"},
            "lineage": RUN.to_meta(),
            "run": {"epoch_loss_sum": 1.5, "epoch_correct": 3, "epoch_samples": 4, "history": [dict(EPOCH)]}}
    return ckpt.Checkpoint(step, params, SGD(params).state_dict(), meta)


def arrays_of(c: ckpt.Checkpoint) -> dict[str, np.ndarray]:
    arrays = {f"params/{k}": v for k, v in c.params.items()}
    arrays.update({f"optim/{k}": v for k, v in c.optimizer.items()})
    return arrays


def meta_of(c: ckpt.Checkpoint) -> dict:
    return {"kind": "lenet5-checkpoint", "step": c.step, **c.meta}


def refused(path, match, key=None):
    """Loading `path` is one StorageError matching `match`, with Python's allocations bounded."""
    tracemalloc.start()
    try:
        with pytest.raises(StorageError, match=match) as err:
            ckpt.load(path, key)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(err.value)
    assert peak < BOUND, f"peak {peak} bytes while refusing {path.name}"
    return err.value


def npy(array_header: dict, data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, array_header)
    return buf.getvalue() + data


def test_a_real_checkpoint_round_trips_with_and_without_a_key(tmp_path):
    c = good()
    ckpt.save(tmp_path, c)
    back = ckpt.load(ckpt.path_for(tmp_path, RUN.run_id, 5))
    assert back.step == 5 and back.meta == c.meta
    assert all(np.array_equal(back.params[k], c.params[k]) for k in c.params)
    ckpt.save(tmp_path, good(6), key=KEY)
    assert ckpt.load(ckpt.path_for(tmp_path, RUN.run_id, 6), KEY).step == 6
    assert ckpt.load(ckpt.path_for(tmp_path, RUN.run_id, 6)).step == 6  # without a key the checksum alone is checked


def test_zip_bomb_is_refused_from_the_directory_before_inflating(tmp_path):
    path = tmp_path / "ckpt-000000001.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("params/fc1.weight.npy", "w", force_zip64=True) as f:
            f.write(npy({"descr": "<f4", "fortran_order": False, "shape": (128 << 20,)}))
            zeros = bytes(1 << 20)
            for _ in range(512):  # 512 MiB of zeros: about 0.5 MiB on disk
                f.write(zeros)
    assert path.stat().st_size < 2 << 20
    refused(path, "refused before reading")


def test_a_huge_header_claim_is_refused_before_reading(tmp_path):
    path = tmp_path / "ckpt-000000001.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("params/fc1.weight.npy", npy({"descr": "<f4", "fortran_order": False, "shape": (1 << 40,)}))
    assert path.stat().st_size < 400  # 250-odd bytes that claim 4 TiB
    refused(path, "claims 4398046511104 data bytes")


def test_many_entries_each_small_are_capped_in_total(tmp_path):
    path = tmp_path / "ckpt-000000001.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(80):  # 80 x 1 MiB declared, highly compressible
            zf.writestr(f"a{i}.npy", npy({"descr": "|u1", "fortran_order": False, "shape": (1 << 20,)},
                                         bytes(1 << 20)))
    refused(path, "more than")


def test_object_and_record_dtypes_are_never_read(tmp_path):
    path = tmp_path / "ckpt-000000001.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("params/x.npy", npy({"descr": [("a", "<f4")], "fortran_order": False, "shape": (1,)},
                                        bytes(4)))
    refused(path, "not accepted")


@pytest.mark.parametrize("change, match", [
    (lambda a: a.pop("params/fc3.bias"), "params/fc3.bias"),
    (lambda a: a.update({"params/extra": np.zeros(3, np.float32)}), "params/extra"),
    (lambda a: a.update({"params/fc1.weight": np.zeros((120, 400), np.float64)}), "params/fc1.weight"),
    (lambda a: a.update({"params/fc1.weight": np.zeros((400, 120), np.float32)}), "params/fc1.weight"),
])
def test_wrong_structure_is_refused_before_the_data_is_read(tmp_path, change, match):
    c = good()
    arrays = arrays_of(c)
    change(arrays)
    path = tmp_path / "ckpt-000000005.npz"
    npzfile.write_npz(path, arrays, meta_of(c))  # a valid checksum: only the structure is wrong
    refused(path, f"do not match a LeNet-5 checkpoint: .*{match}")


def test_metadata_that_is_a_list_is_refused(tmp_path):
    path = tmp_path / "ckpt-000000005.npz"
    npzfile.write_npz(path, arrays_of(good()), [1, 2, 3])  # type: ignore[arg-type]
    refused(path, "metadata is a JSON list, not an object")


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.update(step=-5), "step -5 is not a count"),
    (lambda m: m.update(step=True), "step True"),
    (lambda m: m.update(config=[1]), "config is not an object"),
    (lambda m: m["config"].update(epochs="5"), "config epochs is '5'"),
    (lambda m: m["config"].update(epochs=0), "epochs must be >= 1"),
    (lambda m: m["config"].pop("seed"), "config lacks seed"),
    (lambda m: m.update(num_shards=0), "num_shards 0"),
    (lambda m: m.update(data_checksums=["a"]), "data_checksums"),
    (lambda m: m.update(run="x"), "run is not an object"),
    (lambda m: m["run"].update(epoch_loss_sum=float("inf")), "epoch_loss_sum inf"),
    (lambda m: m["run"].update(epoch_samples=-1), "epoch_samples -1"),
    (lambda m: m["run"].update(history={"a": 1}), "history"),
    (lambda m: m.update(kind="lenet5-model"), "not a training checkpoint"),
])
def test_metadata_of_the_wrong_shape_is_refused(tmp_path, edit, match):
    c = good()
    meta = meta_of(c)
    edit(meta)
    path = tmp_path / "ckpt-000000005.npz"
    npzfile.write_npz(path, arrays_of(c), meta)
    refused(path, match)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_parameters_and_optimizer_state_are_refused(tmp_path, value):
    for name in ("params/conv1.bias", "optim/velocity/fc2.weight"):
        c = good()
        arrays = arrays_of(c)
        arrays[name] = arrays[name].copy()
        arrays[name].flat[0] = value
        path = tmp_path / f"{name.replace('/', '_')}.npz"
        npzfile.write_npz(path, arrays, meta_of(c))
        refused(path, f"{name} holds NaN or infinite values")


def test_hmac_missing_or_wrong_is_refused_with_a_key(tmp_path):
    ckpt.save(tmp_path / "unsigned", good())
    refused(ckpt.path_for(tmp_path / "unsigned", RUN.run_id, 5), "not signed", key=KEY)
    ckpt.save(tmp_path / "other", good(), key=b"o" * 32)
    refused(ckpt.path_for(tmp_path / "other", RUN.run_id, 5), "signature mismatch", key=KEY)


def test_a_recomputed_checksum_passes_without_a_key_but_not_with_one(tmp_path):
    """What the plain checksum does not protect: an edit with a recomputed digest."""
    ckpt.save(tmp_path, good(), key=KEY)
    path = ckpt.path_for(tmp_path, RUN.run_id, 5)
    with np.load(path) as npz:
        entries = {k: npz[k] for k in npz.files}
    entries.pop("__sha256__")
    hmac_entry = entries.pop("__hmac__")
    meta_json = str(entries.pop("__meta__"))
    entries["params/fc3.bias"] = np.full(10, 7, np.float32)
    np.savez(path, **entries, __meta__=np.array(meta_json), __sha256__=np.array(npzfile.digest(entries, meta_json)),
             __hmac__=hmac_entry)
    assert ckpt.load(path).params["fc3.bias"][0] == 7
    refused(path, "signature mismatch", key=KEY)


def test_candidates_skip_a_crafted_newest_to_the_older_intact_one(tmp_path, caplog):
    ckpt.save(tmp_path, good(5))
    c = good(9)
    meta = meta_of(c)
    meta["step"] = -1
    npzfile.write_npz(ckpt.path_for(tmp_path, RUN.run_id, 9), arrays_of(c), meta)
    with caplog.at_level(logging.WARNING, logger="coordinator"):
        found = ckpt.candidates(tmp_path)
    assert [c.step for _, c in found] == [5]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and f"ckpt-{RUN.run_id}-000000009.npz" in warnings[0].getMessage()
    assert (tmp_path / f"ckpt-{RUN.run_id}-000000009.npz.damaged").exists()


def test_candidates_with_a_key_skip_unsigned_checkpoints(tmp_path):
    ckpt.save(tmp_path, good(5), key=KEY)
    ckpt.save(tmp_path, good(9))
    found = ckpt.candidates(tmp_path, KEY)
    assert [c.step for _, c in found] == [5]


def test_checkpoint_key_files(tmp_path):
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(UsageError, match="at least 32"):
        npzfile.load_key(tmp_path / "short")
    with pytest.raises(UsageError, match="cannot read checkpoint key"):
        npzfile.load_key(tmp_path / "missing")
    (tmp_path / "good").write_text("ab" * 32 + "\n")
    assert npzfile.load_key(tmp_path / "good") == b"ab" * 32


def test_random_damage_is_always_one_storage_error(tmp_path):
    """Byte flips anywhere, in the headers and central directory, and truncations: never another exception."""
    import random

    ckpt.save(tmp_path, good())
    blob = ckpt.path_for(tmp_path, RUN.run_id, 5).read_bytes()
    rng = random.Random(0)
    target = tmp_path / "mutant.npz"
    for i in range(600):
        b = bytearray(blob)
        if i % 3 == 0:
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        elif i % 3 == 1:
            b = b[: rng.randrange(len(b))]
        else:
            for _ in range(rng.randint(1, 4)):
                end = rng.random() < 0.5
                b[len(b) - 1 - rng.randrange(2048) if end else rng.randrange(2048)] = rng.randrange(256)
        target.write_bytes(bytes(b))
        try:
            ckpt.load(target)
        except StorageError as err:
            assert "\n" not in str(err)
