"""How far apart a model represents harmful and benign prompts (arXiv 2502.00657; docs/algorithms.md#separation).

Representation: the final hidden state (after the last norm) at the last prompt token, for each prompt. Both
sets are projected together onto their first ``components`` principal components; then

* Bhattacharyya distance between Gaussians fitted to each set,
  D_B = ⅛ Δμᵀ Σ⁻¹ Δμ + ½ ln(det Σ / √(det Σ₁ det Σ₂)) with Σ = (Σ₁ + Σ₂)/2 (a ridge of 1e-6·tr/k keeps the
  covariances invertible), and the Bhattacharyya coefficient e^(−D_B) (overlap, 1 = identical);
* the silhouette score of the two-cluster labelling (scikit-learn, Euclidean, in the projected space).

Alignment that separates harmful from benign prompts raises D_B and the silhouette.
"""

from __future__ import annotations

import numpy as np
import torch

from divalign.data.encoding import prompt_ids
from divalign.generation import left_pad
from divalign.models.positions import position_ids


@torch.no_grad()
def last_token_states(model, tokenizer, prompts: list[tuple[str, bool]], batch_size: int = 32,
                      max_tokens: int = 256) -> np.ndarray:
    """(N, hidden) final hidden states at each prompt's last token (prompts, each (text, whether the chat template
    wrote it), keep their last ``max_tokens``)."""
    base = getattr(model, "model", None) or model.base_model
    was_training = model.training
    model.eval()
    out = []
    device = next(model.parameters()).device
    for start in range(0, len(prompts), batch_size):
        ids, mask = left_pad([prompt_ids(tokenizer, text, templated)[-max_tokens:]
                              for text, templated in prompts[start:start + batch_size]], tokenizer.pad_token_id, device)
        hidden = base(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False)
        out.append(hidden.last_hidden_state[:, -1].float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out)


def _cov(x: np.ndarray) -> np.ndarray:
    return np.atleast_2d(np.cov(x, rowvar=False))


def _gaussian(x: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(0), _cov(x) + ridge * np.eye(x.shape[1])


def bhattacharyya(a: np.ndarray, b: np.ndarray) -> float:
    k = a.shape[1]
    ridge = 1e-6 * (np.trace(_cov(np.vstack([a, b]))) / k + 1e-12)
    (mu1, s1), (mu2, s2) = _gaussian(a, ridge), _gaussian(b, ridge)
    s = (s1 + s2) / 2
    diff = mu1 - mu2
    term1 = diff @ np.linalg.solve(s, diff) / 8
    logdet = np.linalg.slogdet(s)[1] - 0.5 * (np.linalg.slogdet(s1)[1] + np.linalg.slogdet(s2)[1])
    return float(term1 + logdet / 2)


def separation(harmful: np.ndarray, benign: np.ndarray, components: int = 10) -> dict:
    from sklearn.decomposition import PCA
    from sklearn.metrics import silhouette_score

    x = np.vstack([harmful, benign])
    k = min(components, x.shape[1], x.shape[0] - 2)
    z = PCA(n_components=k, random_state=0).fit_transform(x)
    za, zb = z[: len(harmful)], z[len(harmful):]
    distance = bhattacharyya(za, zb)
    labels = np.array([1] * len(harmful) + [0] * len(benign))
    return {"bhattacharyya_distance": distance, "bhattacharyya_coefficient": float(np.exp(-distance)),
            "silhouette": float(silhouette_score(z, labels)), "components": k}
