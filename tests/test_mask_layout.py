"""linear_backward reads the relu_mask argument by its strides: a mask whose rows are not
contiguous with each other (here a view of every row's first bytes in a wider buffer) must give
the same gradients as the mask linear_relu_forward returned."""
import torch

from conftest import OPS


def test_relu_mask_with_row_stride_wider_than_a_row(device):
    torch.manual_seed(0)
    x, w, b = (torch.randn(*s, device=device) for s in ((5, 7), (40, 7), (40,)))
    _, mask = OPS.linear_relu_forward(x, w, b)
    wide = torch.zeros(5, 2 * mask.shape[1], dtype=torch.uint8, device=device)
    wide[:, : mask.shape[1]] = mask
    strided = wide[:, : mask.shape[1]]
    assert torch.equal(strided, mask) and strided.stride(0) != mask.shape[1]
    go = torch.randn(5, 40, device=device)
    expected = OPS.linear_backward(go, x, w, mask, [True, True, True])
    got = OPS.linear_backward(go, x, w, strided, [True, True, True])
    for name, a, e in zip(("grad_input", "grad_weight", "grad_bias"), got, expected):
        assert torch.equal(a, e), name
