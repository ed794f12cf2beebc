"""The jimunet training step the benchmarks time: forward, loss, backward (no input gradient), the
optimizer's update and zeroed gradients; one definition, so that every benchmark times the same work
(without the ``Trainer``'s divergence checks)."""


def jimunet_step(model, loss_fn, opt, x, y):
    """A function running one such step of ``model`` on the batch ``(x, y)``."""
    def step():
        loss_fn.forward(model.forward(x, training=True), y)
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
        opt.zero_grad()
    return step
