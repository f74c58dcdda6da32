"""Stand-in for Megatron-LM's ``megatron.training.inprocess_restart``: restart disabled."""


def maybe_wrap_for_inprocess_restart(pretrain):
    """As Megatron-LM without ``--inprocess-restart``: ``pretrain`` unchanged, no store."""
    return pretrain, None
