"""Pieces of the bundled runner that can be checked exactly: the chunked cross-entropy against the
full-logits loss (value and gradients), and the progress display on a terminal and in a log."""

import io
import sys

import pytest

from envdoctor.assets import asset

torch = pytest.importorskip("torch")
sys.path.insert(0, str(asset("train")))
from envdoctor_runner.loss import chunked_cross_entropy  # noqa: E402
from envdoctor_runner.progress import Progress  # noqa: E402


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_chunked_cross_entropy_equals_the_full_loss_and_its_gradients(chunk):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 17, 32, generator=g, requires_grad=True)
    head = torch.nn.Linear(32, 101, bias=False)
    labels = torch.randint(0, 101, (3, 17), generator=g)
    labels[1, 10:] = -100  # padding is ignored
    full = torch.nn.functional.cross_entropy(head(hidden)[:, :-1].reshape(-1, 101), labels[:, 1:].reshape(-1),
                                             ignore_index=-100)
    full.backward()
    want_h, want_w = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None
    got = chunked_cross_entropy(hidden, labels, head, chunk=chunk)
    got.backward()
    assert torch.allclose(got, full, atol=1e-6)
    assert torch.allclose(hidden.grad, want_h, atol=1e-6) and torch.allclose(head.weight.grad, want_w, atol=1e-6)


def test_a_trained_fp32_head_on_a_bf16_stream_computes_in_bf16_and_trains_its_fp32_weight():
    """modules_to_save: [lm_head] keeps an fp32 copy; its matmul runs in the stream's bf16 (as autocast does),
    the loss stays within bf16 rounding of the fp32 loss and the weight's gradient arrives in fp32."""
    g = torch.Generator().manual_seed(1)
    hidden32 = torch.randn(2, 33, 64, generator=g)
    head = torch.nn.Linear(64, 257, bias=False)
    labels = torch.randint(0, 257, (2, 33), generator=g)
    want = chunked_cross_entropy(hidden32, labels, head, chunk=16)
    hidden = hidden32.to(torch.bfloat16).requires_grad_(True)
    seen = []
    hook = head.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    got = chunked_cross_entropy(hidden, labels, head, chunk=16)
    got.backward()
    hook.remove()
    assert seen and set(seen) == {torch.bfloat16}  # the matmul ran in bf16
    assert abs(got.item() - want.item()) <= 0.01 * want.item()
    assert head.weight.grad is not None and head.weight.grad.dtype == torch.float32
    assert hidden.grad is not None and hidden.grad.dtype == torch.bfloat16


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_redraws_one_line_on_a_terminal_and_writes_lines_in_a_log():
    tty, log = Tty(), io.StringIO()
    for stream in (tty, log):
        p = Progress(total=10, stream=stream, width=10, columns=200)  # a wide terminal: every field fits
        p.update(5, 1, 2.5, 1234.0)
        p.message("epoch 1: validation loss 2.4")
    assert tty.getvalue().startswith("\r\x1b[2K█████····· step 5/10 epoch 1 loss 2.5000 1,234 tok/s elapsed 0:00 eta")
    assert tty.getvalue().count("\n") == 1 and log.getvalue().count("\n") == 2
    assert "\x1b" not in log.getvalue() and log.getvalue().splitlines()[1] == "epoch 1: validation loss 2.4"


class WordTokenizer:
    """One id per distinct word (what chunking needs of a tokenizer), EOS = 0."""
    eos_token_id = 0

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.vocab.setdefault(w, len(self.vocab) + 1) for w in text.split()]}


def test_sample_packing_fills_every_chunk_where_per_document_chunks_are_short():
    from envdoctor_runner import data
    docs = [" ".join(f"w{i}x{j}" for j in range(n)) for i, n in enumerate((17, 20, 23, 18, 21, 21))]  # 120 words
    plain, _, _ = data.prepare(docs, WordTokenizer(), 32, 0, 0, seed=0)
    packed, _, stats = data.prepare(docs, WordTokenizer(), 32, 0, 0, seed=0, packing=True)
    assert len(plain) == 6 and max(map(len, plain)) < 32  # one short chunk a document: each padded to 32
    assert sorted(map(len, packed)) == [30, 32, 32, 32]  # 120 words + 6 EOS = 126 tokens, packed
    assert stats["chunks"] == 4
