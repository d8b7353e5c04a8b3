"""The computation of an audit, in pipeline order (no writes to a dataset):

1. ``data``: image folders into FiftyOne samples; labels read as class indices.
2. ``features``: a pretrained backbone's features, cached per file
   (``finetune``: optionally its last block too).
3. ``head``: the linear head on those features, K-fold out-of-sample logits
   (``blocks``: row blocks; ``distributed``: the same on Dask workers).
4. ``influence`` (pyDVL solvers) and ``linear_influence`` (the closed form for
   the linear head); ``pipeline`` runs stages 3-4 over blocks.
5. ``scores``: the per-sample signals and the corruption score.

``auditing`` runs the whole method (checks, stages, then the run and fields of
:mod:`noise_audit.store`); ``flips`` chooses label flips to inject,
``cleaning`` measures what removing suspects buys, ``explain`` finds the
training images that most influence a sample.
"""
