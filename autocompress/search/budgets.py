"""Budget strings (``flops=50M``, ``latency=2ms``, ``size=1.5MB``, ``macs=50%``, ``acc-drop=1%``).

Units (all decimal unless the binary ``Ki``/``Mi``/``Gi`` prefixes are written out):

=============  =======================  ====================================================
budget         metric checked           accepted values
=============  =======================  ====================================================
``macs``       ``macs`` (per sample)    count: ``50M``, ``1.2G``, ``300K``, ``5e7``; or ``50%``
``flops``      ``flops`` (= 2 x MACs)   count as for ``macs``; or ``%`` of the base FLOPs
``params``     ``params``               count as for ``macs``; or ``%``
``bops``       ``bops``                 count as for ``macs``; or ``%``
``size``       ``size_bytes``           ``B``, ``KB``/``MB``/``GB`` (10^3, 10^6, 10^9 bytes),
                                        ``KiB``/``MiB``/``GiB`` (2^10, 2^20, 2^30); bare = bytes;
                                        or ``%``
``latency``    ``latency_ms``           ``us``, ``ms``, ``s``; bare = milliseconds; or ``%``
``acc-drop``   ``acc``                  ``1%`` = one accuracy point below the base model;
                                        a bare number is a fraction (``0.01`` = ``1%``)
=============  =======================  ====================================================

Count suffixes are ``K`` (10^3), ``M`` (10^6), ``G`` (10^9), ``T`` (10^12), case-insensitive.
A percentage of a cost is relative to the base (uncompressed) model: ``macs=50%`` means at most
half the base model's MACs. Every budget is an upper bound (``acc-drop`` bounds the drop).

The ``Budget`` type and its parser live in :mod:`autocompress.metrics` with the metric vocabulary
(budget names, units, hints); this module keeps the public import path.
"""

from __future__ import annotations

from autocompress.metrics import BUDGET_METRICS, Budget, budget_name, parse_budget

__all__ = ["BUDGET_METRICS", "Budget", "budget_name", "parse_budget"]
