"""Training as typed steps: each step takes typed arguments and returns a frozen dataclass.

``fit_features`` -> ``fit_retriever`` -> ``index_retriever`` -> (``carve_ranker_labels`` ->
``build_ranker_examples`` -> ``fit_ranker``) -> ``write_bundle``. The jobs in
:mod:`recsys.jobs` only map a Hydra config onto these steps (:mod:`recsys.training.config`).
"""
