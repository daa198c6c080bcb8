"""Safe checkpoint loading (no pickled code runs) and atomic safetensors saving."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import pytest
import safetensors.torch
import torch

from models.checkpoints import (
    SUPPORTED_SUFFIXES,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    load_state_dict,
    save_state_dict,
)


def _touch_marker(path: str) -> None:
    Path(path).write_text("pwned")


class _Payload:
    """Unpickling this calls _touch_marker(marker): the shape of a real code-carrying checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_touch_marker, (self.marker,))


def _small_state_dict() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=gen),
        "conv.bias": torch.randn(4, generator=gen),
        "norm.weight": torch.ones(4, dtype=torch.float16),
        "step": torch.tensor(7, dtype=torch.int64),
    }


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_safetensors_round_trip_keeps_values_dtypes_and_metadata(tmp_path: Path) -> None:
    sd = _small_state_dict()
    path = tmp_path / "model.safetensors"
    save_state_dict(sd, path, metadata={"stage": "image_pretrain"})
    _assert_same(load_state_dict(path), sd)
    with safetensors.safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"stage": "image_pretrain"}


def test_saved_file_gets_an_ordinary_file_mode(tmp_path: Path) -> None:
    """Readable as any file the user writes (0666 & ~umask), not the 0600 of safetensors' own temporary."""
    old = os.umask(0o022)
    try:
        save_state_dict(_small_state_dict(), tmp_path / "a.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.safetensors").stat().st_mode) == 0o644


def test_save_handles_shared_and_non_contiguous_tensors(tmp_path: Path) -> None:
    base = torch.arange(12.0).reshape(3, 4)
    tied = torch.nn.Parameter(torch.randn(5, 2))
    sd = {"a": base, "a_t": base.t(), "row": base[1], "tied_1": tied, "tied_2": tied}
    path = tmp_path / "shared.safetensors"
    save_state_dict(sd, path)
    loaded = load_state_dict(path)
    _assert_same(loaded, {k: v.detach() for k, v in sd.items()})
    assert loaded["tied_1"].untyped_storage().data_ptr() != loaded["tied_2"].untyped_storage().data_ptr()


def test_lightning_ckpt_unwraps_state_dict(tmp_path: Path) -> None:
    sd = _small_state_dict()
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": sd, "global_step": 3, "epoch": 1, "pytorch-lightning_version": "2.2.0"}, path)
    _assert_same(load_state_dict(path), sd)


@pytest.mark.parametrize("wrapper", ["module", "model", None])
def test_other_wrappers_and_plain_dicts(tmp_path: Path, wrapper: str | None) -> None:
    sd = _small_state_dict()
    path = tmp_path / "weights.pt"
    torch.save(sd if wrapper is None else {wrapper: sd, "iteration": 10}, path)
    _assert_same(load_state_dict(path), sd)


def test_non_tensor_entries_dropped_with_one_warning(tmp_path: Path) -> None:
    sd = _small_state_dict()
    path = tmp_path / "mixed.pth"
    torch.save({"state_dict": {**sd, "note": "hello", "count": 3}}, path)
    with pytest.warns(UserWarning, match="2 non-tensor") as record:
        loaded = load_state_dict(path)
    assert len(record) == 1
    assert "'note'" in str(record[0].message) and "'count'" in str(record[0].message)
    _assert_same(loaded, sd)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("writer", ["torch.save", "pickle_protocol_2", "pickle_default_protocol"])
def test_code_carrying_pickle_is_refused_and_nothing_runs(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "marker.txt"
    # Payload first: the unpickler stops at the first forbidden global, and a plain pickle of a tensor
    # (torch.storage._load_from_bytes) is one too.
    payload = {"hyper_parameters": _Payload(marker), "state_dict": {"w": torch.zeros(2)}}
    path = tmp_path / "evil.ckpt"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2 if writer == "pickle_protocol_2" else pickle.DEFAULT_PROTOCOL)
    # Sanity: the payload really runs when the file is unpickled without protection.
    with open(path, "rb") as f:
        torch.load(f, weights_only=False) if writer == "torch.save" else pickle.load(f)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(UnsafeCheckpointError, match="Nothing in the file was executed") as info:
        load_state_dict(path)
    assert not marker.exists()
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    # One line: the file, what it holds, how to convert a TRUSTED copy (in words) and the safetensors target...
    assert "\n" not in message and str(path) in message and "TRUST" in message
    assert str(path.with_suffix(".safetensors")) in message and "save_state_dict" in message
    # ...but no ready-to-paste way to unpickle the very file that was refused.
    assert "weights_only=False" not in message and "python -c" not in message and "torch.load(" not in message
    if writer != "pickle_default_protocol":  # newer protocols are rejected at an opcode, before the global
        assert "the Python global " in message and "._touch_marker" in message
    else:
        assert "pickle instruction" in message


def test_os_system_payload_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"

    class _System:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            import os

            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.bin"
    torch.save({"w": torch.zeros(1), "x": _System()}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"the Python global posix\.system"):
        load_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("truncated", "incomplete metadata"),  # an interrupted download or copy: the header promises more bytes
        ("cut_in_header", "header"),
        ("garbage", "header too large"),  # the first 8 bytes read as an absurd header length
        ("empty", "header too small"),
    ],
)
def test_a_corrupt_safetensors_names_the_file_and_the_fix(tmp_path: Path, damage: str, reason: str) -> None:
    good = tmp_path / "good.safetensors"
    save_state_dict(_small_state_dict(), good)
    data = good.read_bytes()
    content = {
        "truncated": data[: len(data) // 2],
        "cut_in_header": data[:20],
        "garbage": bytes(range(256)) * 4,
        "empty": b"",
    }[damage]
    path = tmp_path / "bad" / "model.safetensors"
    path.parent.mkdir()
    path.write_bytes(content)
    with pytest.raises(CorruptCheckpointError) as info:
        load_state_dict(path)
    message = str(info.value)
    assert isinstance(info.value, ValueError) and "\n" not in message
    assert message.startswith(f"{path} (") and "truncated or corrupt" in message and reason in message
    assert "download or copy it again" in message and "export it again" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_a_git_lfs_pointer_says_to_fetch_the_weights(tmp_path: Path) -> None:
    path = tmp_path / "svd_xt.safetensors"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 9559625024\n")
    with pytest.raises(CorruptCheckpointError, match=r"svd_xt\.safetensors is a Git LFS pointer .*git lfs pull"):
        load_state_dict(path)


def test_a_truncated_torch_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": _small_state_dict()}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CorruptCheckpointError, match=r"last\.ckpt \(200 bytes\) is truncated or corrupt"):
        load_state_dict(path)


def test_unknown_suffix_names_supported_ones(tmp_path: Path) -> None:
    path = tmp_path / "weights.npz"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="supported suffixes") as info:
        load_state_dict(path)
    for suffix in SUPPORTED_SUFFIXES:
        assert suffix in str(info.value)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_state_dict(path)


def test_save_rejects_wrong_suffix_and_non_tensors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=".safetensors"):
        save_state_dict({"w": torch.zeros(1)}, tmp_path / "w.ckpt")
    with pytest.raises(ValueError, match="offending keys"):
        save_state_dict({"w": torch.zeros(1), "step": 3}, tmp_path / "w.safetensors")  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="metadata"):
        save_state_dict({"w": torch.zeros(1)}, tmp_path / "w.safetensors", metadata={"step": 3})  # type: ignore[dict-item]


def test_atomic_save_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "model.safetensors"
    save_state_dict(_small_state_dict(), path)
    save_state_dict({"w": torch.ones(3)}, path)  # overwrite in place
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.safetensors"]
    _assert_same(load_state_dict(path), {"w": torch.ones(3)})


def test_interrupted_save_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.safetensors"
    old = _small_state_dict()
    save_state_dict(old, path)
    before = path.read_bytes()

    def _crash_midway(tensors: dict[str, torch.Tensor], filename: str, metadata: object = None) -> None:
        Path(filename).write_bytes(b"partial header bytes")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", _crash_midway)
    with pytest.raises(OSError, match="disk full"):
        save_state_dict({"w": torch.ones(3)}, path)

    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    monkeypatch.undo()
    _assert_same(load_state_dict(path), old)
