"""utils.memory.huge_page_zeros: behaves as torch.zeros (the 2 MB pages are only a hint to the kernel)."""

from __future__ import annotations

import io

import pytest
import torch

from utils.memory import huge_page_zeros


@pytest.mark.parametrize("shape,dtype", [((3, 5), torch.float32), ((3000, 512), torch.float32), ((1 << 20,), torch.int32)])
def test_huge_page_zeros_is_torch_zeros(shape, dtype) -> None:
    a = huge_page_zeros(*shape, dtype=dtype)
    assert a.shape == shape and a.dtype == dtype and a.is_contiguous() and not a.any()
    a.view(-1)[::7] = 3
    assert int(a.sum()) == 3 * len(range(0, a.numel(), 7))
    buf = io.BytesIO()
    torch.save({"a": a}, buf)  # what a resume file holds
    buf.seek(0)
    b = torch.load(buf, weights_only=True)["a"]
    assert torch.equal(a, b) and b.untyped_storage().nbytes() == a.numel() * a.element_size()
