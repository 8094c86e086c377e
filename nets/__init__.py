"""Network architecture both stages build from: where a backbone is cut and what its top is.

``fer.extract`` runs a backbone's bottom over frames into the cache; ``fer.train`` trains its top from that
cache; both must agree on where the cut is. That knowledge lives here, below both stages
(``cli -> extract, train -> nets -> cache``): it imports neither stage, only ``fer.cache`` and the model
libraries.
"""
