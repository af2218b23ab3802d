"""The layers of docs/design.md (Layers), asserted on the import graph so they stay as drawn.

grimp reads every import statement, those inside functions included (the CLI's lazy imports count).
"""

import grimp
import networkx as nx
import pytest

# The layers by import name: the folders atlas/, ingest/, api/, cli/ (docs/design.md, Package names).
CORE, INGEST, API, CLI = "atlas", "atlas_ingest", "atlas_api", "atlas_cli"
PACKAGES = (CORE, INGEST, API, CLI)
# (importer, imported): arrows the layer rule forbids.
FORBIDDEN = [(CORE, INGEST), (CORE, API), (CORE, CLI), (API, INGEST), (INGEST, API), (API, CLI), (INGEST, CLI)]


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True, cache_dir=None)


@pytest.mark.parametrize("importer,imported", FORBIDDEN)
def test_layer_rule(graph, importer, imported):
    chains = graph.find_shortest_chains(importer=importer, imported=imported, as_packages=True)
    assert not chains, f"{importer} reaches {imported} via " + "; ".join(" -> ".join(c) for c in sorted(chains))


def test_no_import_circles(graph):
    """No two modules import each other, directly or round a loop (a package's __init__ re-exporting its
    own modules is not a loop: those edges point down)."""
    g = nx.DiGraph()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if not module.startswith(imported + "."):  # a module importing its own package: upward
                g.add_edge(module, imported)
    circles = [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]
    assert not circles, f"import circles: {circles}"


def test_the_rules_see_real_imports(graph):
    """The graph is not empty: the CLI reaches all three layers, and the API reaches the core."""
    for layer in (CORE, INGEST, API):
        assert graph.find_shortest_chains(importer=CLI, imported=layer, as_packages=True)
    assert graph.direct_import_exists(importer=API, imported=CORE, as_packages=True)
