"""Sample-quality evaluation: the FID Inception network and sample metrics.

Import the submodules directly (`evaluation.inception`, `evaluation.metrics`): this
package imports nothing, so metrics stay usable without loading the network.
"""
