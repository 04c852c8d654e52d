"""``cmma``: the conditional multimodal autoencoder (Pandey & Dukkipati 2016), whose latent prior is
set by the label and whose decoder sees only the latent."""

from __future__ import annotations

from fastvae.models.cvae import CVAE
from fastvae.models.registry import register

__all__ = ["CMMA"]


@register("cmma")
class CMMA(CVAE):
    """CMMA of Pandey & Dukkipati, "Variational methods for Conditional Multimodal Learning:
    Generating Human Faces from Attributes" (arXiv 1603.01801, 2016).

    The label ``y`` (class indices, int64 ``(B,)``) determines the latent through the prior, and the
    data are generated from the latent alone::

        q(z|x,y) = N(mu(x,y), diag e^logvar(x,y))        the encoder sees x and one-hot(y)
        p(z|y)   = N(mu_p(y), diag e^logvar_p(y))         the learned prior network
        p(x|z)                                            the decoder sees z only (NOT y)

        recon = mean_b [ -log p(x_b | z_b) ]                        (summed over pixels; z_b ~ q(z|x_b,y_b))
        kl    = mean_b [ KL(q(z|x_b,y_b) || p(z|y_b)) ]              (summed over latent dims, closed form)
        loss  = recon + kl                                          (the negative ELBO of log p(x|y))

    So everything the label says about ``x`` must pass through ``z``: generating for a label is
    ``z ~ p(z|y)``, ``x ~ p(x|z)``. Architecture, label encoding, prior network (initialised to
    ``N(0, I)``), ``sample(n, y)`` and ``log_likelihood(x, k, y)`` are :class:`~fastvae.models.cvae.CVAE`'s,
    except that the decoder is the unconditional shared decoder.

    Args:
        input_shape: ``(C, H, W)`` or ``(D,)``.
        latent_dim: size of ``z``.
        num_classes: number of label classes (default 3, the dSprites shapes).
        likelihood: ``"bernoulli"`` (default) or ``"gaussian"``.
        obs_std: standard deviation of the Gaussian observation model.
    """

    decoder_takes_label = False
