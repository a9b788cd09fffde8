"""The analysis wing: one party's combined analysis, pure (arrays and frames in, reports out).

Modules, in the order data flows: `options` (the choices and defaults, standard library
only), `arrays` (array type names), `design`, `glm`, `pooling`, `usable` (which peers'
twins can be used), `fit`, `weighting`, `peerstats` and `screening` (statistics, and the
judging of them), `party` (the whole analysis). Nothing is re-exported here: the node's
config and the CLI import `twinnode.analysis.options` at start-up, and importing this
package must stay as light as that.
"""
