"""Training losses as pure tensor functions: no model, no config object, no ``torch.distributed``.

Gathering across ranks happens in the caller (``moca_train.cl``); the functions here see whatever
batch they are given. Shapes: B queries, M candidate rows (positives; M >= B, e.g. the gathered global
batch), K hard negatives per row, D embedding dim, C = M + M*K (or M + K) score columns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812


def false_negative_mask(
    pos_ids: torch.Tensor, neg_ids: torch.Tensor | None, *, batch: int, offset: int = 0, other_negatives: bool = True
) -> torch.Tensor:
    """Score columns to drop because their content equals the query's own positive.

    Identical positives (the same class label, a duplicated row, the same page) are not negatives of
    each other; nor is a "hard negative" identical to the positive.

    Args:
        pos_ids: (M,) content id of each positive (equal ids = identical content).
        neg_ids: (M, K) content ids of the hard negatives, or None.
        batch: B, number of queries; query i's positive is row ``offset + i``.
        offset: row of query 0's positive.
        other_negatives: the column layout of :func:`contrastive_logits`.

    Returns:
        (B, C) bool, True where the column is masked; the target column is never masked.
    """
    rows = torch.arange(batch, device=pos_ids.device) + offset  # (B,)
    target_ids = pos_ids[rows]  # (B,)
    mask = pos_ids[None, :] == target_ids[:, None]  # (B, M)
    mask[torch.arange(batch, device=pos_ids.device), rows] = False
    if neg_ids is not None and neg_ids.numel():
        negs = neg_ids.reshape(1, -1) if other_negatives else neg_ids[rows]  # (1, M*K) | (B, K)
        mask = torch.cat([mask, negs == target_ids[:, None]], dim=1)  # (B, C)
    return mask


def contrastive_logits(
    q: torch.Tensor,
    d: torch.Tensor,
    *,
    temperature: float,
    negatives: torch.Tensor | None = None,
    offset: int = 0,
    other_negatives: bool = True,
    pos_ids: torch.Tensor | None = None,
    neg_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Temperature-scaled similarity logits and targets of the InfoNCE loss.

    Columns: the M positives, then the hard negatives: all M*K of them in row-major order when
    ``other_negatives`` (paper Eq. 3), else only the query's own K (released code).

    Args:
        q: (B, D) query embeddings (unit norm for cosine similarity).
        d: (M, D) positive embeddings; query i's positive is ``d[offset + i]``.
        temperature: softmax temperature tau.
        negatives: (M, K, D) hard negatives aligned with the rows of ``d``, or None.
        offset: row of query 0's positive in ``d``.
        other_negatives: include other rows' hard negatives.
        pos_ids: (M,) content ids for false-negative masking (None: no masking).
        neg_ids: (M, K) content ids of the negatives (only with ``pos_ids``).

    Returns:
        ``(logits (B, C) float32 with masked columns at -inf, targets (B,) long)``.
    """
    b = q.shape[0]
    rows = torch.arange(b, device=q.device) + offset  # (B,)
    q, d = q.float(), d.float()
    scores = [q @ d.T]  # (B, M)
    if negatives is not None and negatives.shape[1] > 0:
        negatives = negatives.float()
        if other_negatives:
            scores.append(q @ negatives.reshape(-1, negatives.shape[-1]).T)  # (B, M*K)
        else:
            scores.append(torch.einsum("bd,bkd->bk", q, negatives[rows]))  # (B, K)
    else:
        neg_ids = None
    logits = torch.cat(scores, dim=1) / temperature  # (B, C)
    if pos_ids is not None:
        mask = false_negative_mask(pos_ids, neg_ids, batch=b, offset=offset, other_negatives=other_negatives)
        logits = logits.masked_fill(mask, float("-inf"))
    return logits, rows


def info_nce(
    q: torch.Tensor,
    d: torch.Tensor,
    *,
    temperature: float,
    negatives: torch.Tensor | None = None,
    offset: int = 0,
    other_negatives: bool = True,
    pos_ids: torch.Tensor | None = None,
    neg_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE: cross-entropy of each query against all positives and hard negatives (moca-method.md §4.1).

    Args:
        q: (B, D) query embeddings.
        d: (M, D) positives; query i's positive is ``d[offset + i]``.
        temperature: softmax temperature (MoCa: 0.03).
        negatives: (M, K, D) hard negatives aligned with ``d``, or None.
        offset: row of query 0's positive in ``d`` (rank offset when only local queries are scored).
        other_negatives: every query also scores all other rows' hard negatives (paper Eq. 3).
        pos_ids: (M,) content ids; columns identical to the query's positive are masked.
        neg_ids: (M, K) content ids of the negatives.

    Returns:
        Scalar mean loss over the B queries (float32).
    """
    logits, targets = contrastive_logits(
        q,
        d,
        temperature=temperature,
        negatives=negatives,
        offset=offset,
        other_negatives=other_negatives,
        pos_ids=pos_ids,
        neg_ids=neg_ids,
    )
    return F.cross_entropy(logits, targets)


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Masked-language-modelling cross-entropy, averaged over scored positions.

    The denominator is the number of scored positions (at least 1), so a micro-batch without any
    masked token gives 0, not NaN (moca-method.md §7 item 9).

    Args:
        logits: (..., V) vocabulary logits.
        labels: (...) target ids, ``-100`` where unscored.

    Returns:
        Scalar float32 loss.
    """
    labels = labels.reshape(-1)  # (M,)
    logits = logits.reshape(-1, logits.shape[-1]).float()  # (M, V); explicit V, so M = 0 works
    total = F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
    return total / (labels != -100).sum().clamp(min=1)


def mim_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Masked-image-modelling MSE over the masked tokens' values only (MoCa's MAE term).

    The denominator is the number of masked values (at least 1): no masked patch gives 0, not NaN.

    Args:
        pred: (N, F) predicted pixels per merged visual token.
        target: (N, F) original (normalised) pixels.
        mask: (N,) bool, True for tokens that were noised; None scores every token.

    Returns:
        Scalar float32 loss.
    """
    err = (pred.float() - target.float()).pow(2)  # (N, F)
    if mask is None:
        return err.sum() / max(err.numel(), 1)
    scored = err[mask]  # (M, F): selecting (not multiplying by 0) keeps NaNs of unscored rows out
    return scored.sum() / max(scored.numel(), 1)


def cpt_objective(mlm: torch.Tensor, mae: torch.Tensor, *, mae_weight: float) -> torch.Tensor:
    """MoCa's CPT objective L = MLM + w * MAE (paper w = 0.5; reference script 0.1)."""
    return mlm + mae_weight * mae
