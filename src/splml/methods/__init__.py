"""The single-positive methods: each loss with its formula, its per-sample store and its figures.

* :mod:`splml.methods.base`: the contract every loss follows (:class:`~splml.methods.base.SPMLLoss`,
  :class:`~splml.methods.base.LossContext`, the masks of the observed labels, ``neg_log``, ...);
* :mod:`splml.methods.store`: the base of the per-sample stores (Lightning callbacks);
* one module per stateless loss (``an``, ``an_ls``, ``wan``, ``epr``, ``full``, ``asl``, ``focal``,
  ``hill``, ``splc``, ``gr``) and one folder per method family that owns its losses, its store,
  its figures and its helpers (``expected``, ``role``, ``large_loss``, ``em``, ``scl``, ``adagc``,
  ``contrastive``);
* :mod:`splml.methods.combined`: "base + gamma * term", which the YAMLs of ``en_scl`` & co. compose;
* :mod:`splml.methods.registry`: every method's name, paper, formula and stores, registered by its
  module; the config group ``loss=``, the tests and the README's methods table follow it.
"""
