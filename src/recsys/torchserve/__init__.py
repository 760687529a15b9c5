"""TorchServe export (``recsys export-torchserve``): a bundle as a model archive (``.mar``)
whose handler answers with the recsys service's own lists (docs/torchserve.md).

:mod:`recsys.torchserve.archive` writes the archive; :mod:`recsys.torchserve.handler` is what
TorchServe runs (the archive's handler file only imports it). TorchServe is an optional extra
(``pip install -e '.[torchserve]'``; Java 17)."""
