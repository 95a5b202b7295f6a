"""The memory plan (python/ggtune/memory.py): how its terms move with the training options."""

from ggtune.gguf_io import read_llama_gguf
from ggtune.memory import layer_intermediates, plan_memory
from tiny_models import write_tiny_llama


def test_keeping_layers_trades_checkpoints_for_intermediates(tmp_path):
    weights = read_llama_gguf(write_tiny_llama(tmp_path / "m.gguf", n_layer=3))
    hp, ctx, batch = weights.hparams, 16, 2
    args = dict(n_lora_params=1000, n_ctx=ctx, n_batch=batch, head_chunk=256, runtime_bytes=0)
    plan = {keep: plan_memory(weights, checkpointing=True, keep_layers=keep, **args) for keep in (0, 1, 3, 9)}
    per_layer, residual = layer_intermediates(weights, batch, ctx), ctx * batch * hp.n_embd * 4
    assert plan[0].activations == 0 and plan[0].checkpoints == 3 * residual
    assert plan[1].activations == per_layer and plan[1].checkpoints == 2 * residual
    assert plan[1].total - plan[0].total == per_layer - residual
    assert plan[9].total == plan[3].total  # more than the model's layers keeps them all
    no_checkpointing = plan_memory(weights, checkpointing=False, **args)
    assert no_checkpointing.activations == plan[3].activations
