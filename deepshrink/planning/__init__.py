"""Planning: per-layer densities and bits from measured sensitivity, under a budget on the user's validation metric.

Built on the transforms and layers below it and on the codec's cost model; never imports format, runtime,
serialize, experiments or cli.
"""
