"""The one collaborative denoiser of a step (cvd_core/sampling/denoiser.py): its pairing plan and seam."""

from __future__ import annotations

import pytest
import torch

from cvd_core.sampling import CollaborativeDenoiser, PairingPlan, pair_schedule
from cvd_core.sampling.executor import Iteration, LocalExecutor


@pytest.mark.parametrize("strategy", ["random", "all_pairs", "fixed"])
@pytest.mark.parametrize("views", [1, 2, 3, 4, 5, 7])
def test_possible_pairs_cover_every_call_and_the_count_is_constant(strategy, views):
    plan = PairingPlan(views, strategy, seed=3)
    possible = set(plan.possible_pairs())
    counts = set()
    for step in range(30):
        for substep in range(3):
            pairs = plan.pairs(step, substep)
            assert set(pairs) <= possible
            counts.add(len(pairs))
    assert counts == {plan.pairs_per_call()}


def test_partitions_concatenate_independent_matchings():
    plan = PairingPlan(4, "random", seed=9, partitions=2)
    assert plan.pairs(5, 1) == pair_schedule(4, "random", 5, 9, substep=2) + pair_schedule(4, "random", 5, 9, substep=3)
    with pytest.raises(ValueError, match="partitions > 1 needs strategy 'random'"):
        PairingPlan(4, "fixed", partitions=2)
    with pytest.raises(ValueError, match="pairing strategy must be one of"):
        PairingPlan(4, "spiral")


def _toy_denoiser(x, t, text, plucker, F, partner):
    out = x * 0.5 + text.mean((1, 2)).view(-1, 1, 1, 1, 1)
    return out if partner is None else out + 0.1 * x[partner]


def _denoiser(views=3, cfg=7.5, executor=None):
    cond, uncond = torch.randn(views, 77, 8), torch.randn(1, 77, 8)
    plucker = torch.randn(views, 6, 2, 16, 16)
    return CollaborativeDenoiser(_toy_denoiser, cond, uncond, plucker, lambda i, j: torch.eye(3).expand(2, 3, 3),
                                 PairingPlan(views, "random", 1), cfg, max_batch=4, executor=executor)


def test_prediction_parts_give_the_cfg_result():
    denoiser = _denoiser()
    latents = torch.randn(3, 4, 2, 2, 2)
    with denoiser.session(latents):
        prediction = denoiser.predict(latents, Iteration(0, 1, 0, 999), with_parts=True)
        plain = denoiser.predict(latents, Iteration(0, 1, 0, 999))
    assert torch.equal(prediction.eps, plain.eps) and plain.cond is None
    assert torch.allclose(prediction.eps, prediction.uncond + 7.5 * (prediction.cond - prediction.uncond))


def test_session_ends_the_executor_job_after_an_error():
    class Recording(LocalExecutor):
        ended = []

        def end(self, failed):
            self.ended.append(failed)

    executor = Recording(_toy_denoiser, torch.device("cpu"))
    denoiser = _denoiser(executor=executor)
    latents = torch.randn(3, 4, 2, 2, 2)
    with pytest.raises(RuntimeError, match="boom"):
        with denoiser.session(latents):
            raise RuntimeError("boom")
    with denoiser.session(latents):
        pass
    assert executor.ended == [True, False]


def test_a_non_finite_prediction_names_the_step():
    denoiser = CollaborativeDenoiser(lambda x, *a: x * float("nan"), torch.randn(1, 77, 8), None,
                                     torch.randn(2, 6, 2, 16, 16), lambda i, j: torch.eye(3).expand(2, 3, 3),
                                     PairingPlan(2), guidance_scale=1.0, max_batch=2)
    latents = torch.randn(2, 4, 2, 2, 2)
    with denoiser.session(latents), pytest.raises(ValueError, match=r"at step 3 of 5 \(timestep 41\)"):
        denoiser.predict(latents, Iteration(2, 5, 0, 41))
