"""The gated delta rule in plain torch: a recurrent form and a chunked form of the same recurrence.

Per value head, with state S [k_dim, v_dim], decay g ≤ 0 (log space) and write strength beta:
    S ← exp(g_t)·S;  S ← S + k_t ⊗ beta_t·(v_t − Sᵀk_t);  o_t = Sᵀq_t
The recurrent form runs token by token and can record S after each token (what speculative
verification needs to roll back). The chunked form (prefill) solves each chunk's writes at once with
a unit-lower-triangular system and scans only across chunks. q and k arrive L2-normalised, q scaled.
All inputs share the state's dtype (float32; float64 for a float64 model), heads before time:
q, k [B, H, T, Dk], v [B, H, T, Dv], g, beta [B, H, T].
"""

import torch

CHUNK = 64


def recurrent_delta_rule(q, k, v, g, beta, state, state_steps=None):
    """Token-by-token form. Updates `state` in place; writes S after token t to state_steps[t]."""
    s = state
    outputs = []
    for t in range(q.shape[2]):
        s = s * g[:, :, t].exp()[..., None, None]
        read = (s * k[:, :, t, :, None]).sum(dim=-2)
        delta = (v[:, :, t] - read) * beta[:, :, t, None]
        s = s + k[:, :, t, :, None] * delta[:, :, None, :]
        outputs.append((s * q[:, :, t, :, None]).sum(dim=-2))
        if state_steps is not None:
            state_steps[t].copy_(s)
    state.copy_(s)
    return torch.stack(outputs, dim=2)


def chunked_delta_rule(q, k, v, g, beta, state, chunk: int = CHUNK):
    """Chunked form for long inputs. Updates `state` in place; returns outputs [B, H, T, Dv]."""
    length = q.shape[2]
    pad = (-length) % chunk
    if pad:  # zero k and beta, g = 0: padded tokens write nothing and do not decay the state
        q, k, v = (torch.nn.functional.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        g, beta = (torch.nn.functional.pad(x, (0, pad)) for x in (g, beta))
    batch, heads, total, k_dim = k.shape
    n_chunks = total // chunk
    q, k, v = (x.reshape(batch, heads, n_chunks, chunk, x.shape[-1]) for x in (q, k, v))
    g, beta = (x.reshape(batch, heads, n_chunks, chunk) for x in (g, beta))

    cum = g.cumsum(dim=-1)  # log decay from chunk start through token t
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    decay = (cum[..., :, None] - cum[..., None, :]).masked_fill(~causal, float("-inf")).exp()  # [.., t, s]
    k_beta = k * beta[..., None]
    # Writes u solve (I + A)u = beta·v − beta·exp(cum)·k·S0 with A[t, s] = beta_t e^{cum_t−cum_s} k_t·k_s, s < t.
    # The solver reads only the strict lower triangle of `system` (unitriangular).
    system = (k_beta @ k.transpose(-1, -2)) * decay
    rhs = torch.cat((v * beta[..., None], k_beta * cum.exp()[..., None]), dim=-1)
    solved = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)
    writes_from_values, writes_from_state = solved.split([v.shape[-1], k_dim], dim=-1)
    scores = (q @ k.transpose(-1, -2)) * decay
    q_decayed = q * cum.exp()[..., None]
    k_to_end = k * (cum[..., -1:] - cum).exp()[..., None]

    s = state
    outputs = []
    for c in range(n_chunks):
        writes = writes_from_values[:, :, c] - writes_from_state[:, :, c] @ s
        outputs.append(q_decayed[:, :, c] @ s + scores[:, :, c] @ writes)
        s = s * cum[:, :, c, -1].exp()[..., None, None] + k_to_end[:, :, c].transpose(-1, -2) @ writes
    state.copy_(s)
    return torch.cat(outputs, dim=2)[:, :, :length]
