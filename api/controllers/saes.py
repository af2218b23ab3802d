"""SAEs and their features: listing, one SAE, a feature's card and lineage, orphans, label search."""

from __future__ import annotations

from typing import Annotated, Literal

from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter

from atlas import queries as q
from atlas.methods import method as method_info
from atlas.queries.checks import attach_checks
from atlas.queries.common import SAE_COLUMNS, check_feature, check_method, check_tau, sae_row
from atlas.queries.computed import require_stack_method
from atlas.queries.neuronpedia import feature_url
from atlas.queries.steering import SteeringSet, steering_set, to_safetensors

from ..errors import errors
from ..params import Cursor, FeatureIndex, Method, Name, SaeId, Tau, page_offset, page_token
from ..settings import Settings
from ..state import AtlasState
from ..structs import SAE, FeatureCard, FoundFeature, MatchRef, OrphanPage, SAEDetail, SAEPage


def _sae(row: dict) -> SAE:
    return SAE(**{k: row[k] for k in SAE.__struct_fields__})


class SaesController(Controller):
    path = "/api"
    tags = ["saes"]

    @get("/saes", operation_id="listSaes", sync_to_thread=True, responses=errors())
    def list_saes(self, atlas: NamedDependency[AtlasState], settings: NamedDependency[Settings],
                  stack: Name = None, model: Name = None, cursor: Cursor = None) -> SAEPage:
        """SAEs of the atlas, by stack and layer, one page at a time."""
        off, size = page_offset(cursor), settings.page_size
        rows = atlas.cursor().execute(
            f"SELECT {', '.join(SAE_COLUMNS)} FROM saes WHERE (? IS NULL OR stack = ?) AND (? IS NULL OR model = ?) "
            f"ORDER BY stack, layer, sae_id LIMIT ? OFFSET ?", [stack, stack, model, model, size + 1, off]).fetchall()
        items = [_sae(dict(zip(SAE_COLUMNS, r))) for r in rows[:size]]
        return SAEPage(items=items, next=page_token(off + size) if len(rows) > size else None)

    @get("/saes/{sae_id:str}", operation_id="getSae", sync_to_thread=True, responses=errors(404))
    def get_sae(self, atlas: NamedDependency[AtlasState], sae_id: SaeId) -> SAEDetail:
        """One SAE: metadata, labelled features, mean density and stored pairs per method."""
        con = atlas.cursor()
        row = sae_row(con, sae_id)
        n_lab, dens = con.execute("SELECT count(label), avg(density) FROM features WHERE sae_id = ?", [sae_id]).fetchone()
        pairs = dict(con.execute("SELECT method, count(*) FROM pair_stats WHERE sae_a = ? OR sae_b = ? GROUP BY 1",
                                 [sae_id, sae_id]).fetchall())
        return SAEDetail(sae=_sae(row), n_labelled=n_lab, mean_density=dens, pairs=pairs)

    @get("/saes/{sae_id:str}/features/{feature:int}", operation_id="getFeature", sync_to_thread=True,
         responses=errors(404))
    def get_feature(self, atlas: NamedDependency[AtlasState], sae_id: SaeId, feature: FeatureIndex,
                    top: Annotated[int, QueryParameter(ge=1, le=50, description="Candidates per other SAE.")] = 5
                    ) -> FeatureCard:
        """A feature's card: stats, label, Neuronpedia links, best matches both ways, example contexts."""
        snap = atlas.snapshot()
        con = snap.cursor()
        layers = snap.layers()
        sae = snap.sae(sae_id)
        check_feature(sae, feature)
        dec_norm, threshold, density, max_act, label = snap.feature_row(sae_id, feature)
        # Point lookups in the table files: outgoing rows of the feature in each pair's file, incoming rows
        # in each reverse file (scores >= the method's floor) or, for distances, a filtered read of the pair's file.
        files = snap.files()
        rows = files.outgoing(sae_id, feature, top) + files.incoming(sae_id, feature)
        matches: dict[str, list[MatchRef]] = {}
        kept: dict[tuple, int] = {}
        for method, other, f, score, rank, assigned, direction in sorted(
                rows, key=lambda r: method_info(r[0]).sort_key(r[3])):
            group = (method, other, direction)
            if kept.get(group, 0) < top:  # the best `top` of each other SAE, both directions
                kept[group] = kept.get(group, 0) + 1
                matches.setdefault(method, []).append(MatchRef(other, f, layers[other], score, rank, assigned, direction))
        for refs in matches.values():
            refs.sort(key=lambda m: (m.layer, m.sae_id, m.direction, m.rank))
        examples = []
        if sae_id in snap.with_examples():
            cur = con.execute("SELECT kind, activation, tokens, highlight, dataset FROM examples WHERE sae_id = ? "
                              "AND feature = ? ORDER BY kind = 'top' DESC, activation DESC LIMIT 20", [sae_id, feature])
            names = [d[0] for d in cur.description]
            examples = [dict(zip(names, r)) for r in cur.fetchall()]
        return FeatureCard(sae_id=sae_id, feature=feature, layer=sae["layer"], label=label, dec_norm=dec_norm,
                           threshold=threshold, density=density, max_act=max_act,
                           neuronpedia_url=feature_url(sae["neuronpedia_id"], feature),
                           neuronpedia_embed=feature_url(sae["neuronpedia_id"], feature, embed=True),
                           lineage_url=f"/api/saes/{sae_id}/features/{feature}/lineage", matches=matches,
                           examples=examples)

    @get("/saes/{sae_id:str}/features/{feature:int}/lineage", operation_id="getLineage", sync_to_thread=True,
         responses=errors(404, 408, 422))
    def get_lineage(self, atlas: NamedDependency[AtlasState], sae_id: SaeId, feature: FeatureIndex,
                    direction: Annotated[Literal["both", "forward", "backward"], QueryParameter()] = "both",
                    tau: Annotated[float | None, QueryParameter(
                        ge=-1.0, le=1.0, description="Score bar of similarity methods; distance methods (MSE) use "
                        "quantile (default 0.5).")] = 0.7,
                    quantile: Annotated[float | None, QueryParameter(
                        ge=0.0, le=1.0, schema_extra={"minimum": 0.0},  # Litestar drops a falsy bound of an Optional
                        description="Per-pair bar: keep the best q of each pair's scores.")] = None,
                    max_skip: Annotated[int, QueryParameter(ge=0, le=8, description="Layers a link may skip.")] = 1,
                    method: Method = "decoder_cos", include_sites: FromQuery[bool] = True,
                    edges: Annotated[Literal["default", "all"], QueryParameter(
                        description="default: carry, split, merge and gap edges; all: every candidate above "
                        "the bar (today's hairball on real families).")] = "default") -> q.Lineage:
        """Ancestors and descendants of a feature in its stack, as a DAG of typed edges (carry / split / merge /
        gap) with a one-line summary: born, splits, last seen, how it ends."""
        m = check_method(method)
        if tau is not None and quantile is None and not m.is_distance:
            check_tau(m, tau)
        snap = atlas.snapshot()
        con = snap.cursor()
        require_stack_method(con, sae_id, method)  # not a feature that "dies" where nothing was matched
        return attach_checks(con, q.lineage(con, sae_id, feature, direction, tau, quantile, max_skip, method,
                                            include_sites, files=snap.files(), edges=edges))

    @get("/saes/{sae_id:str}/features/{feature:int}/steering", operation_id="getSteeringSet", sync_to_thread=True,
         responses=errors(404, 408, 422))
    def get_steering(self, atlas: NamedDependency[AtlasState], sae_id: SaeId, feature: FeatureIndex,
                     tau: Tau = 0.7, method: Method = "decoder_cos",
                     format: Annotated[Literal["json", "safetensors"], QueryParameter(
                         description="json, or a safetensors file (tensors directions [n, d_in], norms, layers, "
                         "features; metadata hooks, sae_ids).")] = "json") -> Response[SteeringSet]:
        """The steering set of a feature: decoder directions, norms, hooks and layers of its carry chain."""
        check_method(method)
        snap = atlas.snapshot()
        s = steering_set(snap.cursor(), atlas.indexes, sae_id, feature, tau=tau, method=method, files=snap.files())
        if format == "json":
            return Response(s)
        return Response(to_safetensors(s), media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="steering-{feature}.safetensors"'})

    @get("/orphans", operation_id="getOrphans", sync_to_thread=True, responses=errors(404))
    def get_orphans(self, atlas: NamedDependency[AtlasState], settings: NamedDependency[Settings],
                    sae: Annotated[str, QueryParameter(min_length=1, max_length=512, description="An SAE id.")],
                    tau: Tau = 0.7, min_siblings: Annotated[int, QueryParameter(ge=0, le=1000)] = 1,
                    by: Annotated[Literal["any", "seed", "dataset"], QueryParameter()] = "any",
                    cursor: Cursor = None) -> OrphanPage:
        """Features of an SAE shared with none of its siblings (other seeds / datasets), one page at a time."""
        o = q.orphans(atlas.cursor(), sae, tau, min_siblings, by)
        off, size = page_offset(cursor), settings.page_size
        return OrphanPage(sae_id=o.sae_id, siblings=o.siblings, n_features=o.n_features, n_orphans=o.n_orphans,
                          orphan_frac=o.orphan_frac, orphans=o.orphans[off:off + size],
                          next=page_token(off + size) if off + size < len(o.orphans) else None)

    @get("/features", operation_id="findFeatures", sync_to_thread=True, responses=errors())
    def find(self, atlas: NamedDependency[AtlasState],
             label: Annotated[str, QueryParameter(min_length=1, max_length=200, description="Text in the label.")],
             limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50) -> list[FoundFeature]:
        """Features whose label contains the text (case-insensitive)."""
        return [FoundFeature(**f) for f in q.find_features(atlas.cursor(), label, limit)]


__all__ = ["SaesController"]
