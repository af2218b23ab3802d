"""The atlas's DuckDB schema (docs/design.md, Tables): tables, version and migrations, views and macros.

matches, correlations and compositions are views over the table files the `parts` catalog lists
(parts.py, docs/storage.md); their column types are those of the always-empty tables in schema `empty`.
"""

from pathlib import Path

from atlas.methods import METHODS

SCHEMA_VERSION = 9
STORAGE = {"storage_compatibility_version": "v1.4.0"}
"""Jobs write atlas files in DuckDB 1.4's storage format, so DuckDB CLIs and clients from 1.4 on open them
(duckdb 2.0 writes a newer format by default that, e.g., the `duckdb-cli` on PyPI cannot read)."""

# Each step upgrades an atlas from the version before it (the tables it adds come from TABLES).
MIGRATIONS = {
    2: "ALTER TABLE pair_stats ADD COLUMN IF NOT EXISTS matching_score DOUBLE;"
       "ALTER TABLE pair_stats ADD COLUMN IF NOT EXISTS explained_variance DOUBLE;",
    3: "ALTER TABLE saes ADD COLUMN IF NOT EXISTS release VARCHAR;"
       "ALTER TABLE saes ADD COLUMN IF NOT EXISTS variant VARCHAR;"
       "ALTER TABLE saes ADD COLUMN IF NOT EXISTS kind VARCHAR DEFAULT 'sae';"
       "ALTER TABLE saes ADD COLUMN IF NOT EXISTS hook_out VARCHAR;"
       "ALTER TABLE saes ADD COLUMN IF NOT EXISTS d_out INTEGER;"
       "ALTER TABLE saes ADD COLUMN IF NOT EXISTS l0 DOUBLE;",
    # rank_b (feature_b's rank of the edge) types lineage edges; PW-MCC per pair; widths table (TABLES)
    4: "ALTER TABLE matches ADD COLUMN IF NOT EXISTS rank_b SMALLINT;"
       "UPDATE matches SET rank_b = r.rank_b FROM (SELECT rowid AS rid, row_number() OVER (PARTITION BY sae_a, sae_b, "
       "method, feature_b ORDER BY CASE WHEN ends_with(method, '_mse') THEN score ELSE -score END) AS rank_b "
       "FROM matches) r WHERE matches.rowid = r.rid;"
       "ALTER TABLE pair_stats ADD COLUMN IF NOT EXISTS pw_mcc DOUBLE;"
       "ALTER TABLE pair_stats ADD COLUMN IF NOT EXISTS pw_mcc_random DOUBLE;",
    # matches, correlations, compositions move out of the DuckDB file into table files: a job step, not
    # SQL (migration.move_tables_out, run by `atlas migrate` or any job)
    5: None,
    # What versions 4-5 stored as pw_mcc is MMCS (mean best |cosine|, both ways): it moves to mmcs, and pw_mcc
    # (Song et al.'s assignment, which needs the weights) stays NULL until `atlas match` recomputes the pair:
    # its params_hash is marked stale so the next run does. Widths gain min_child_cos and the duplicate class
    # on `atlas match --pairs widths` (new parameters, new hash). docs/design.md, Consistency.
    6: "ALTER TABLE pair_stats ADD COLUMN IF NOT EXISTS mmcs DOUBLE;"
       "ALTER TABLE pair_stats ADD COLUMN IF NOT EXISTS mmcs_random DOUBLE;"
       "UPDATE pair_stats SET mmcs = pw_mcc, mmcs_random = pw_mcc_random, pw_mcc = NULL, pw_mcc_random = NULL, "
       "params_hash = 'stale-' || params_hash WHERE mmcs IS NULL AND pw_mcc IS NOT NULL;"
       "ALTER TABLE widths ADD COLUMN IF NOT EXISTS min_child_cos FLOAT;",
    # Random baselines kept per shape: table random_baselines (TABLES creates it before the steps run; this one
    # checks it is there). The views gain matches_by_b over the reverse files, which lineage_edges reads
    # (create() rewrites the views of an atlas without it; docs/storage.md).
    7: "SELECT count(*) FROM random_baselines;",
    # Hooks as TransformerLens means them (docs/design.md, Activations by hook): BERT's (MiniLM's) layer output
    # is TransformerLens's hook_normalized_resid_post, not hook_resid_post (the sum before the LayerNorm); and
    # HF module paths stored as hooks (`encoder.layer.2.output`, `model.layers.3`, sparsify's `layers.6.mlp`)
    # become the TransformerLens names atlas_ingest.hooks.RULES maps them to, with the site they imply where none was
    # stored (the stack's "None" replaced by it). SAE ids are kept as they were.
    8: r"""
CREATE OR REPLACE TEMP MACRO atlas_path(h) AS
    regexp_replace(h, '^(?:base_model\.|model\.|transformer\.|gpt_neox\.|bert\.|roberta\.|language_model\.)+', '');
CREATE OR REPLACE TEMP MACRO atlas_tl_hook(h, side, bert) AS CASE
    WHEN bert AND regexp_full_match(h, 'blocks\.\d+\.hook_resid_post')
        THEN regexp_replace(h, 'hook_resid_post$', 'hook_normalized_resid_post')
    WHEN regexp_full_match(h, 'blocks\.\d+\.(?:[a-z0-9_]+\.)*hook_[a-z0-9_]+|hook_embed|hook_pos_embed') THEN h
    WHEN side = 'in' AND regexp_full_match(atlas_path(h), '(?:layers|h)\.\d+\.mlp')
        THEN regexp_replace(atlas_path(h), '^(?:layers|h)\.(\d+)\.mlp$', 'blocks.\1.mlp.hook_in')
    WHEN regexp_full_match(atlas_path(h), '(?:layers|h)\.\d+')
        THEN regexp_replace(atlas_path(h), '^(?:layers|h)\.(\d+)$', 'blocks.\1.hook_resid_post')
    WHEN regexp_full_match(atlas_path(h), '(?:layers|h)\.\d+\.mlp')
        THEN regexp_replace(atlas_path(h), '^(?:layers|h)\.(\d+)\.mlp$', 'blocks.\1.hook_mlp_out')
    WHEN regexp_full_match(atlas_path(h), '(?:layers|h)\.\d+\.(?:self_attn|attn|attention)')
        THEN regexp_replace(atlas_path(h), '^(?:layers|h)\.(\d+)\..*$', 'blocks.\1.hook_attn_out')
    WHEN regexp_full_match(atlas_path(h), 'encoder\.layer\.\d+(?:\.output)?')
        THEN regexp_replace(atlas_path(h), '^encoder\.layer\.(\d+).*$', 'blocks.\1.hook_normalized_resid_post')
    WHEN regexp_full_match(atlas_path(h), 'encoder\.layer\.\d+\.output\.dense')
        THEN regexp_replace(atlas_path(h), '^encoder\.layer\.(\d+).*$', 'blocks.\1.hook_mlp_out')
    WHEN regexp_full_match(atlas_path(h), 'encoder\.layer\.\d+\.attention\.output\.dense')
        THEN regexp_replace(atlas_path(h), '^encoder\.layer\.(\d+).*$', 'blocks.\1.hook_attn_out')
    WHEN regexp_full_match(h, '(?:resid_post|mlp_out|attn_out)_layer_\d+')
        THEN regexp_replace(h, '^(resid_post|mlp_out|attn_out)_layer_(\d+)$', 'blocks.\2.hook_\1')
    ELSE h END;
CREATE OR REPLACE TEMP TABLE atlas_hooks AS
    SELECT sae_id, site AS old_site,
           atlas_tl_hook(hook, CASE WHEN coalesce(kind, 'sae') <> 'sae' AND hook = hook_out THEN 'in' ELSE 'out' END,
                         regexp_matches(model, '(?i)minilm|bert')) AS new_hook,
           CASE WHEN hook_out IS NULL THEN NULL ELSE atlas_tl_hook(hook_out, 'out', regexp_matches(model, '(?i)minilm|bert')) END
               AS new_out
    FROM saes;
UPDATE saes SET hook = h.new_hook, hook_out = h.new_out,
    site = coalesce(h.old_site, CASE WHEN regexp_matches(coalesce(h.new_out, h.new_hook), 'attn|hook_z') THEN 'attn'
                                     WHEN regexp_matches(coalesce(h.new_out, h.new_hook), 'mlp') THEN 'mlp' ELSE 'resid' END),
    stack = CASE WHEN h.old_site IS NULL
                 THEN regexp_replace(stack, '-None', '-' || CASE WHEN regexp_matches(coalesce(h.new_out, h.new_hook), 'attn|hook_z')
                      THEN 'attn' WHEN regexp_matches(coalesce(h.new_out, h.new_hook), 'mlp') THEN 'mlp' ELSE 'resid' END)
                 ELSE stack END
FROM atlas_hooks h WHERE saes.sae_id = h.sae_id
    AND (h.new_hook <> saes.hook OR h.new_out IS DISTINCT FROM saes.hook_out OR h.old_site IS NULL);
DROP TABLE atlas_hooks;
""",
    # The sibling rule as macros (sibling_pairs, siblings) that every sibling query uses; create() writes them with
    # the other macros, so the step only marks that a reader may call them.
    9: "SELECT 1;",
}

TABLES = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);

CREATE TABLE IF NOT EXISTS saes (
    sae_id VARCHAR PRIMARY KEY,
    model VARCHAR NOT NULL,
    hook VARCHAR NOT NULL,
    site VARCHAR,
    layer INTEGER NOT NULL,
    d_in INTEGER NOT NULL,
    d_sae INTEGER NOT NULL,
    arch VARCHAR NOT NULL,
    k INTEGER,
    seed INTEGER,
    dataset VARCHAR,
    stack VARCHAR NOT NULL,
    source VARCHAR NOT NULL,
    format VARCHAR NOT NULL,
    sha256 VARCHAR NOT NULL,
    neuronpedia_id VARCHAR,
    index_file VARCHAR,
    index_factory VARCHAR,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    release VARCHAR,              -- sae_lens release, Hugging Face repo or training run it comes from
    variant VARCHAR,              -- its name among siblings there: average_l0_71, canonical, trainer_3, seed1, best
    kind VARCHAR DEFAULT 'sae',   -- sae | transcoder | skip_transcoder
    hook_out VARCHAR,             -- transcoders: the hook the decoder writes to (site and layer are its)
    d_out INTEGER,                -- transcoders: width of the output space (decoder rows); NULL = d_in
    l0 DOUBLE                     -- average L0 where the source states it
);

CREATE TABLE IF NOT EXISTS features (
    sae_id VARCHAR NOT NULL,
    feature INTEGER NOT NULL,
    dec_norm FLOAT NOT NULL,
    threshold FLOAT,
    density FLOAT,
    max_act FLOAT,
    label VARCHAR
);

CREATE TABLE IF NOT EXISTS pair_stats (
    sae_a VARCHAR NOT NULL,
    sae_b VARCHAR NOT NULL,
    method VARCHAR NOT NULL,
    n_a INTEGER NOT NULL,
    n_b INTEGER NOT NULL,
    n_assigned INTEGER NOT NULL,
    n_matched INTEGER NOT NULL,   -- assigned with score at least tau (at most tau for decoder_mse)
    matched_frac DOUBLE NOT NULL, -- n_matched / n_a
    mean_score DOUBLE,            -- over assigned pairs
    median_score DOUBLE,
    mse_after_perm DOUBLE,        -- mean squared error of (folded) decoder rows over assigned pairs
    identity_frac DOUBLE,         -- assigned pairs with feature_a = feature_b
    tau DOUBLE NOT NULL,
    score_hist DOUBLE[],          -- counts of assigned scores in 20 equal bins over [hist_lo, hist_hi]
    hist_lo DOUBLE,
    hist_hi DOUBLE,
    matching_score DOUBLE,        -- with activations: mean P(b fires | a fires) over assigned pairs
    explained_variance DOUBLE,    -- with activations: encode(a) -> permute -> decode(b) against b's layer
    params_hash VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    pw_mcc DOUBLE,                -- decoder_cos: PW-MCC (Song et al. 2025), mean cosine of one one-to-one assignment of all features
    pw_mcc_random DOUBLE,         -- the same for random unit decoders of these widths and d_in (simulated)
    mmcs DOUBLE,                  -- decoder_cos: MMCS (Sharkey et al. 2022), mean best |cosine| in the other SAE, both ways
    mmcs_random DOUBLE            -- the same for random unit decoders (closed form)
);

-- Width siblings (same model and hook, sae_b wider): one row per feature of the narrow SAE sae_a.
CREATE TABLE IF NOT EXISTS widths (
    sae_a VARCHAR NOT NULL, feature_a INTEGER NOT NULL, sae_b VARCHAR NOT NULL,
    class VARCHAR NOT NULL,       -- kept (1 child) | split (>= 2) | duplicate (>= 2, near-copies) | absent (none)
    n_children INTEGER NOT NULL,
    children INTEGER[] NOT NULL,  -- wide features whose best narrow feature (cosine >= tau) is this one
    scores FLOAT[] NOT NULL,      -- their decoder cosines with it, best first
    combo_cos FLOAT,              -- cosine with the best non-negative combination of its children
    best_feature INTEGER NOT NULL, best_score FLOAT NOT NULL,  -- nearest wide feature, whatever the class
    tau DOUBLE NOT NULL, params_hash VARCHAR NOT NULL, run_id VARCHAR NOT NULL,
    min_child_cos FLOAT           -- least cosine between two of its children (>= 2 children)
);

CREATE TABLE IF NOT EXISTS examples (
    sae_id VARCHAR NOT NULL, feature INTEGER NOT NULL,
    kind VARCHAR NOT NULL,        -- top | random
    activation FLOAT NOT NULL,
    token INTEGER NOT NULL,       -- index of the token in the activation store
    tokens VARCHAR[] NOT NULL,    -- the context, as model tokens
    highlight INTEGER NOT NULL,   -- position of the firing token within tokens
    dataset VARCHAR,
    run_id VARCHAR NOT NULL
);

CREATE TABLE IF NOT EXISTS training (
    sae_id VARCHAR PRIMARY KEY, fvu DOUBLE, l0 DOUBLE, dead_frac DOUBLE, samples BIGINT, tokens BIGINT
);

-- The catalog of table files (parts.py): one row per pair (and method) of matches, correlations, compositions.
CREATE TABLE IF NOT EXISTS parts (
    table_name VARCHAR NOT NULL,
    sae_a VARCHAR NOT NULL,
    sae_b VARCHAR NOT NULL,
    method VARCHAR NOT NULL,      -- '' for tables without a method
    file VARCHAR NOT NULL,        -- relative to atlas.files/tables/
    reverse_file VARCHAR,         -- matches of similarity methods: rows >= the index floor, sorted by feature_b
    n_rows BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    run_id VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- Files replaced or deleted: kept for readers of older snapshots, removed by a job after the grace period.
CREATE TABLE IF NOT EXISTS dropped_parts (
    file VARCHAR NOT NULL,
    dropped_at TIMESTAMP          -- when the snapshot without it was published (NULL until then)
);

-- Ablation checks of lineage edges (ingest/jobs/check_edges.py; docs/design.md, Edges under ablation): one row
-- per checked edge or random control pair. Added without a schema version: any job creates it.
CREATE TABLE IF NOT EXISTS edge_checks (
    sae_a VARCHAR NOT NULL, feature_a INTEGER NOT NULL, sae_b VARCHAR NOT NULL, feature_b INTEGER NOT NULL,
    method VARCHAR NOT NULL,      -- the matching method whose edges were sampled
    kind VARCHAR NOT NULL,        -- carry | split | merge | gap | random (a non-edge: the control)
    distance INTEGER NOT NULL,    -- layer_b - layer_a
    score FLOAT,                  -- the edge's match score (NULL for random pairs)
    n_tokens INTEGER NOT NULL,    -- held-out tokens where feature_a fires that the check ran on
    clean FLOAT NOT NULL,         -- feature_b's summed activation on those tokens, unablated
    rel_drop FLOAT,               -- 1 - ablated / clean (NULL: feature_b silent there, untested)
    control_p95 FLOAT,            -- 95th percentile of the pair's random-pair drops
    holds BOOLEAN,                -- rel_drop > control_p95 (NULL: untested)
    run_id VARCHAR NOT NULL
);

-- Random baselines of the consistency measures (atlas/match/consistency.py), computed once per shape and kept:
-- PW-MCC of two random unit dictionaries of n_a and n_b rows in d_in dims, by the code path of `version`.
CREATE TABLE IF NOT EXISTS random_baselines (
    method VARCHAR NOT NULL,      -- pw_mcc (MMCS's baseline is closed form: not kept)
    n_a INTEGER NOT NULL, n_b INTEGER NOT NULL, d_in INTEGER NOT NULL,
    k INTEGER NOT NULL,           -- candidates per feature of the sparse path
    version INTEGER NOT NULL,     -- consistency.BASELINE_VERSION of the code that computed it
    value DOUBLE NOT NULL,
    seconds DOUBLE,               -- what computing it took
    run_id VARCHAR NOT NULL,
    PRIMARY KEY (method, n_a, n_b, d_in, k, version)
);

CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    kind VARCHAR NOT NULL,
    params JSON,
    versions JSON,
    started_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    status VARCHAR NOT NULL       -- running | ok | interrupted
);
"""

RANDOM_BASELINE_KEY = ("method", "n_a", "n_b", "d_in", "k", "version")
"""The key columns of random_baselines, in the order atlas.match.consistency.baseline_key gives them."""

# Column types of the table files; never written (the views read the files).
PART_DDL = """
CREATE SCHEMA IF NOT EXISTS empty;

CREATE TABLE IF NOT EXISTS empty.matches (
    sae_a VARCHAR NOT NULL,
    feature_a INTEGER NOT NULL,
    sae_b VARCHAR NOT NULL,
    feature_b INTEGER NOT NULL,
    method VARCHAR NOT NULL,
    score FLOAT NOT NULL,      -- cosine / correlation (higher is better); for decoder_mse the MSE (lower is better)
    rank SMALLINT NOT NULL,    -- 1 = feature_a's best candidate in sae_b
    assigned BOOLEAN NOT NULL, -- in the one-to-one assignment of the pair
    run_id VARCHAR NOT NULL,
    rank_b SMALLINT            -- 1 = feature_b's best candidate in sae_a (see edge_kind)
);

CREATE TABLE IF NOT EXISTS empty.correlations (
    sae_a VARCHAR NOT NULL, feature_a INTEGER NOT NULL,
    sae_b VARCHAR NOT NULL, feature_b INTEGER NOT NULL,
    pearson FLOAT NOT NULL, p_b_given_a FLOAT, jaccard FLOAT, n_tokens BIGINT NOT NULL,
    run_id VARCHAR NOT NULL
);

CREATE TABLE IF NOT EXISTS empty.compositions (
    sae_b VARCHAR NOT NULL, feature_b INTEGER NOT NULL,
    kind VARCHAR NOT NULL,        -- AND | OR | PASS
    parents INTEGER[] NOT NULL, sae_a VARCHAR NOT NULL, score FLOAT NOT NULL,
    run_id VARCHAR NOT NULL
);
"""

# Views give SQL users the same answers as the query functions in atlas.queries.
VIEWS = """
CREATE OR REPLACE VIEW stacks AS
SELECT stack, model, site, d_sae, arch, seed, dataset,
       count(*) AS n_saes, min(layer) AS first_layer, max(layer) AS last_layer
FROM saes GROUP BY ALL;

-- one row per matched (pair, method) within a stack; the stack first, so SELECT * says whose layers these are
CREATE OR REPLACE VIEW layer_pairs AS
SELECT a.stack, a.layer AS layer_a, b.layer AS layer_b, b.layer - a.layer AS distance, p.*
FROM pair_stats p JOIN saes a ON a.sae_id = p.sae_a JOIN saes b ON b.sae_id = p.sae_b
WHERE a.stack = b.stack;
"""

EDGE_KIND = (("carry", "assigned"), ("split", "rank_b"), ("merge", "rank_a"))
"""The kind of a lineage edge, defined once: the first kind whose column is 1 (true), else candidate. carry = in the
one-to-one assignment; split = feature_a is feature_b's best parent (a parent with several children); merge =
feature_b is feature_a's best child (a child with several parents); candidate: followed only with edges = 'all'.
The edge_kind macro is written from it, edgeindex.kind_codes applies it to arrays (edge indexes store the codes)."""
LINEAGE_KINDS = (EDGE_KIND[0][0], "gap", *(kind for kind, _ in EDGE_KIND[1:]), "candidate")
"""The kinds a lineage edge can have, in the order answers count them: EDGE_KIND's, a gap (a carry across skipped
layers) after the carry, candidate last (records.LineageLayer has a count of each)."""

# Table macros: the query functions in atlas.queries call these, so SQL users get the same answers.
MACROS = """
-- The lowest score a method's reverse files (matches_by_b) hold: Method.index_floor; NULL where they hold none.
CREATE OR REPLACE MACRO index_floor(method) AS
    CASE method """ + " ".join(f"WHEN '{m.name}' THEN {m.index_floor}" for m in METHODS.values()
                            if m.index_floor is not None) + """ END;

-- Matches of method_ with score >= min_score_: from the reverse files (matches_by_b, about a tenth of the rows)
-- when min_score_ is at least the method's index floor, else from the pair files (docs/storage.md).
CREATE OR REPLACE MACRO matches_above(method_, min_score_) AS TABLE
SELECT * FROM matches_by_b
WHERE method = method_ AND score >= min_score_ AND coalesce(min_score_ >= index_floor(method_), false)
UNION ALL
SELECT * FROM matches
WHERE method = method_ AND score >= min_score_ AND NOT coalesce(min_score_ >= index_floor(method_), false);

-- Siblings (docs/design.md, Words): SAEs of one model, hook and width; each ordered pair with how its two differ
-- (seed, dataset, seed and dataset, or neither: a variant such as another L0). Every sibling query reads these two.
CREATE OR REPLACE MACRO sibling_pairs() AS TABLE
SELECT a.sae_id AS sae_a, b.sae_id AS sae_b,
       CASE WHEN a.dataset IS DISTINCT FROM b.dataset AND a.seed IS DISTINCT FROM b.seed THEN 'seed and dataset'
            WHEN a.dataset IS DISTINCT FROM b.dataset THEN 'dataset'
            WHEN a.seed IS DISTINCT FROM b.seed THEN 'seed' ELSE 'variant' END AS relation
FROM saes a JOIN saes b ON a.model = b.model AND a.hook = b.hook AND a.d_sae = b.d_sae AND a.sae_id <> b.sae_id;

-- The siblings of sae_: by_ 'seed' (other seeds of its dataset), 'dataset' (other datasets) or 'any'.
CREATE OR REPLACE MACRO siblings(sae_, by_ := 'any') AS TABLE
SELECT sae_b AS sae_id, relation FROM sibling_pairs()
WHERE sae_a = sae_ AND (by_ = 'any' OR (by_ = 'seed' AND relation = 'seed')
                        OR (by_ = 'dataset' AND relation IN ('dataset', 'seed and dataset')));

CREATE OR REPLACE MACRO feature_sharing(sae_, tau_ := 0.7, by_ := 'any') AS TABLE
WITH sibs AS (SELECT sae_id FROM siblings(sae_, by_ := by_)),
matched AS (  -- siblings matched to this SAE by both methods
    SELECT CASE WHEN sae_a = sae_ THEN sae_b ELSE sae_a END AS sibling FROM pair_stats
    WHERE (sae_a = sae_ OR sae_b = sae_) AND method IN ('decoder_cos', 'encoder_cos')
    GROUP BY 1 HAVING count(DISTINCT method) = 2),
edges AS (
    SELECT CASE WHEN sae_a = sae_ THEN feature_a ELSE feature_b END AS feature,
           CASE WHEN sae_a = sae_ THEN sae_b ELSE sae_a END AS sibling,
           CASE WHEN sae_a = sae_ THEN feature_b ELSE feature_a END AS partner, method
    FROM matches
    WHERE assigned AND score >= tau_ AND method IN ('decoder_cos', 'encoder_cos') AND (sae_a = sae_ OR sae_b = sae_)),
shared AS (
    SELECT feature, sibling FROM edges
    WHERE sibling IN (SELECT sae_id FROM sibs) AND sibling IN (SELECT sibling FROM matched)
    GROUP BY feature, sibling, partner HAVING count(DISTINCT method) = 2)
SELECT f.feature, count(s.sibling)::INTEGER AS n_shared,
       (SELECT count(*) FROM matched WHERE sibling IN (SELECT sae_id FROM sibs))::INTEGER AS n_siblings,
       f.label
FROM features f LEFT JOIN shared s ON s.feature = f.feature
WHERE f.sae_id = sae_
GROUP BY f.feature, f.label ORDER BY f.feature;

CREATE OR REPLACE MACRO layer_pair_stats(method_ := 'decoder_cos', min_frac_ := 0.9, min_score_ := 0.9,
                                         stack_ := NULL) AS TABLE
SELECT p.sae_a, p.sae_b, p.layer_a, p.layer_b, p.method, p.n_a, p.n_b, p.n_matched, p.matched_frac,
       coalesce(h.n_at, 0) / p.n_a AS frac_at_min_score, p.mean_score, p.median_score, p.mse_after_perm,
       p.identity_frac, coalesce(h.n_at, 0) / p.n_a >= min_frac_ AS permutation_only, p.stack
FROM layer_pairs p
LEFT JOIN (SELECT sae_a, sae_b, method, count(*) AS n_at FROM matches_above(method_, min_score_)
           WHERE assigned GROUP BY ALL) h
  USING (sae_a, sae_b, method)
WHERE p.method = method_ AND (stack_ IS NULL OR p.stack = stack_)
ORDER BY p.stack, p.layer_a, p.layer_b;

CREATE OR REPLACE MACRO permutation_pairs(method_ := 'decoder_cos', min_frac_ := 0.9, min_score_ := 0.9,
                                          stack_ := NULL) AS TABLE
SELECT * FROM layer_pair_stats(method_ := method_, min_frac_ := min_frac_, min_score_ := min_score_, stack_ := stack_)
WHERE permutation_only;

-- Births and deaths per layer of a stack: features of layer L with no assigned match >= tau_ from the
-- previous layer (births) or to the next layer (deaths). NULL where that layer pair was not matched.
CREATE OR REPLACE MACRO birth_death(stack_, method_ := 'decoder_cos', tau_ := 0.7) AS TABLE
WITH st AS (SELECT sae_id, layer, d_sae, lead(sae_id) OVER w AS next_sae, lag(sae_id) OVER w AS prev_sae
            FROM saes WHERE stack = stack_ WINDOW w AS (ORDER BY layer)),
kept AS (SELECT sae_a, sae_b, count(DISTINCT feature_a) AS n_a, count(DISTINCT feature_b) AS n_b
         FROM matches_above(method_, tau_) WHERE assigned AND sae_a IN (SELECT sae_id FROM st) GROUP BY ALL),
done AS (SELECT sae_a, sae_b FROM pair_stats WHERE method = method_)
SELECT st.layer, st.sae_id, st.d_sae,
       CASE WHEN (st.prev_sae, st.sae_id) IN (SELECT (sae_a, sae_b) FROM done)
            THEN st.d_sae - coalesce((SELECT n_b FROM kept WHERE sae_a = st.prev_sae AND sae_b = st.sae_id), 0) END AS births,
       CASE WHEN (st.sae_id, st.next_sae) IN (SELECT (sae_a, sae_b) FROM done)
            THEN st.d_sae - coalesce((SELECT n_a FROM kept WHERE sae_a = st.sae_id AND sae_b = st.next_sae), 0) END AS deaths
FROM st ORDER BY st.layer;

-- The kind of a lineage edge (EDGE_KIND). A gap is a carry across skipped layers.
CREATE OR REPLACE MACRO edge_kind(assigned, rank_a, rank_b) AS
    CASE """ + " ".join(f"WHEN {column} = 1 THEN '{kind}'" for kind, column in EDGE_KIND) + """ ELSE 'candidate' END;

-- Lineage edges of (sae_, feature_) within its stack, as lineage() in Python computes them: from each
-- node, the passing (score >= tau_) carry/split/merge edges to the adjacent layer; where a node has none,
-- carry edges that skip up to max_skip_ layers (gaps). edges_ := 'all' follows every passing candidate.
-- It reads the passing rows of the stack's pairs once (matches_above: the reverse files where they hold them;
-- only the stack's files, pruned by their folders; docs/storage.md), then walks them in memory, layer positions
-- and feature ids as integers, the gap rule applied per reached node.
CREATE OR REPLACE MACRO lineage_edges(sae_, feature_, tau_ := 0.7, method_ := 'decoder_cos', max_skip_ := 1,
                                      edges_ := 'default') AS TABLE
WITH RECURSIVE
st AS (SELECT sae_id, layer, dense_rank() OVER (ORDER BY layer)::INTEGER AS pos FROM saes
       WHERE stack = (SELECT stack FROM saes WHERE sae_id = sae_)),
root AS (SELECT pos FROM st WHERE sae_id = sae_),
e AS MATERIALIZED (
      SELECT a.pos AS pos_a, m.feature_a, b.pos AS pos_b, m.feature_b, m.score,
             edge_kind(m.assigned, m.rank, m.rank_b) AS kind, b.pos - a.pos AS step
      FROM matches_above(method_, tau_) m JOIN st a ON a.sae_id = m.sae_a JOIN st b ON b.sae_id = m.sae_b
      WHERE b.pos > a.pos AND b.pos - a.pos <= 1 + max_skip_
        AND (edges_ = 'all' OR (b.pos - a.pos = 1 AND kind <> 'candidate') OR kind = 'carry')),
-- the edges a forward walk can use (from the root's layer on) and a backward one (up to it): each step of a walk
-- joins its frontier to all of them, so they are cut once here
e_fwd AS MATERIALIZED (SELECT * FROM e WHERE pos_a >= (SELECT pos FROM root)),
e_bwd AS MATERIALIZED (SELECT * FROM e WHERE pos_b <= (SELECT pos FROM root)),
-- each reached node's edges of the least step it has (a gap only where no nearer edge passes)
fwd(pos_a, feature_a, pos_b, feature_b, score, kind, step) AS (
    SELECT NULL::INTEGER, NULL::INTEGER, pos, feature_::INTEGER, NULL::FLOAT, NULL::VARCHAR, NULL::INTEGER FROM root
    UNION
    SELECT e.* FROM (SELECT DISTINCT pos_b, feature_b FROM fwd) f JOIN e_fwd e
      ON e.pos_a = f.pos_b AND e.feature_a = f.feature_b
    QUALIFY e.step = min(e.step) OVER (PARTITION BY e.pos_a, e.feature_a)),
bwd(pos_a, feature_a, pos_b, feature_b, score, kind, step) AS (
    SELECT pos, feature_::INTEGER, NULL::INTEGER, NULL::INTEGER, NULL::FLOAT, NULL::VARCHAR, NULL::INTEGER FROM root
    UNION
    SELECT e.* FROM (SELECT DISTINCT pos_a, feature_a FROM bwd) f JOIN e_bwd e
      ON e.pos_b = f.pos_a AND e.feature_b = f.feature_a
    QUALIFY e.step = min(e.step) OVER (PARTITION BY e.pos_b, e.feature_b)),
out AS (SELECT * FROM fwd WHERE pos_a IS NOT NULL UNION SELECT * FROM bwd WHERE pos_b IS NOT NULL)
SELECT a.sae_id AS sae_a, o.feature_a, a.layer AS layer_a, b.sae_id AS sae_b, o.feature_b, b.layer AS layer_b, o.score,
       CASE WHEN o.step > 1 AND o.kind = 'carry' THEN 'gap' ELSE o.kind END AS kind, o.step - 1 AS gap
FROM out o JOIN st a ON a.pos = o.pos_a JOIN st b ON b.pos = o.pos_b
ORDER BY layer_a, o.feature_a, layer_b, o.feature_b;

-- That lineage with each edge's ablation check where one ran (edge_checks): rel_drop and holds, else NULL.
CREATE OR REPLACE MACRO lineage_checked(sae_, feature_, tau_ := 0.7, method_ := 'decoder_cos', max_skip_ := 1,
                                        edges_ := 'default') AS TABLE
SELECT l.*, c.rel_drop AS causal_drop, c.holds AS causal_holds
FROM lineage_edges(sae_, feature_, tau_ := tau_, method_ := method_, max_skip_ := max_skip_, edges_ := edges_) l
LEFT JOIN (SELECT * FROM edge_checks WHERE method = method_ AND kind <> 'random') c
  USING (sae_a, feature_a, sae_b, feature_b);

-- The nodes of that lineage: the feature itself and every end of its edges (the lineage walked once).
CREATE OR REPLACE MACRO lineage_nodes(sae_, feature_, tau_ := 0.7, method_ := 'decoder_cos', max_skip_ := 1,
                                      edges_ := 'default') AS TABLE
WITH l AS MATERIALIZED (SELECT sae_a, feature_a, sae_b, feature_b FROM lineage_edges(
         sae_, feature_, tau_ := tau_, method_ := method_, max_skip_ := max_skip_, edges_ := edges_))
SELECT n.sae_id, n.feature, s.layer FROM (
    SELECT sae_ AS sae_id, feature_ AS feature
    UNION SELECT sae_a, feature_a FROM l
    UNION SELECT sae_b, feature_b FROM l) n
JOIN saes s USING (sae_id) ORDER BY s.layer, n.feature;

-- The width tree of (sae_, feature_): its narrower ancestors (depth < 0) and wider descendants (depth > 0)
-- through the widths table, each with its parent, cosine to it, and its own class as a narrow feature.
CREATE OR REPLACE MACRO width_tree(sae_, feature_) AS TABLE
WITH RECURSIVE
edges AS (SELECT sae_a, feature_a, sae_b, unnest(children) AS feature_b, unnest(scores) AS score FROM widths),
down(depth, sae_id, feature) AS (
    SELECT 0, sae_, feature_
    UNION
    SELECT d.depth + 1, e.sae_b, e.feature_b FROM down d JOIN edges e ON e.sae_a = d.sae_id AND e.feature_a = d.feature),
up(depth, sae_id, feature) AS (
    SELECT 0, sae_, feature_
    UNION
    SELECT u.depth - 1, e.sae_a, e.feature_a FROM up u JOIN edges e ON e.sae_b = u.sae_id AND e.feature_b = u.feature)
SELECT n.depth, n.sae_id, s.d_sae, n.feature, p.sae_a AS parent_sae, p.feature_a AS parent_feature, p.score,
       w.class, w.n_children, w.combo_cos, f.label, w.min_child_cos
FROM (SELECT * FROM down UNION SELECT * FROM up) n
JOIN saes s USING (sae_id)
LEFT JOIN edges p ON p.sae_b = n.sae_id AND p.feature_b = n.feature
LEFT JOIN widths w ON w.sae_a = n.sae_id AND w.feature_a = n.feature
LEFT JOIN features f ON f.sae_id = n.sae_id AND f.feature = n.feature
ORDER BY n.depth, n.sae_id, n.feature;
"""


class SchemaVersionError(ValueError):
    """The atlas file has a schema version this code does not serve (the CLI prints it as one line)."""


def create(con, tables_root: Path | None = None, move_tables_out=None) -> None:
    """Create or upgrade the schema of a writable connection. Upgrading a version-4 atlas moves its big
    tables into table files: `move_tables_out(con)` does that (migration.py)."""
    version = version_of(con)
    con.execute(TABLES)
    con.execute(PART_DDL)
    if version is None:  # a new file
        version = SCHEMA_VERSION
        con.execute("INSERT INTO schema_version VALUES (?)", [version])
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(f"atlas schema version {version} is newer than this code's {SCHEMA_VERSION}: upgrade feature-atlas")
    for v in range(version + 1, SCHEMA_VERSION + 1):
        if MIGRATIONS[v] is None:
            if move_tables_out is None:
                raise SchemaVersionError(f"atlas schema version {v - 1} needs `atlas migrate` to move its tables out")
            move_tables_out(con)
        else:
            con.execute(MIGRATIONS[v])
        con.execute("UPDATE schema_version SET version = ?", [v])
    con.execute(VIEWS)
    # the views over table files: written by every publish; here only where missing or naming another folder
    # (a new or moved atlas), since rewriting them costs time in the number of files
    named = files_root(con)
    if named is None or named != (str(Path(tables_root).resolve()) if tables_root else None) \
            or con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name IN ('matches', ?) "
                           "AND NOT internal AND database_name = current_database()", [REVERSE_VIEW]).fetchone()[0] < 2:
        part_views(con, tables_root)
    con.execute(MACROS)


def version_of(con) -> int | None:
    """The schema version of a connection's atlas (None: a new file)."""
    if not con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
                       "AND table_name = 'schema_version'").fetchone()[0]:
        return None
    return con.execute("SELECT max(version) FROM schema_version").fetchone()[0]


def literal(text: str) -> str:
    """`text` as a SQL string literal, for the statements that take no parameters (SET, ATTACH, view bodies)."""
    return "'" + text.replace("'", "''") + "'"


REVERSE_VIEW = "matches_by_b"
"""The view over the matches' reverse files: the rows at or above their method's index floor, sorted by feature_b
(a pair written without its reverse file: its pair file's rows above the floor)."""
FLOORS = {m.name: m.index_floor for m in METHODS.values() if m.index_floor is not None}


def part_views(con, tables_root: Path | None) -> None:
    """(Re)define the views matches, correlations, compositions over the files the catalog lists, and
    matches_by_b over the matches' reverse files, by absolute path under `tables_root` (so `duckdb -readonly
    atlas.duckdb` reads them from any folder), and record that folder in files_root (readers check it: a moved
    atlas needs its views rewritten). The tables are those of schema `empty` (PART_DDL)."""
    files: dict[str, list[str]] = {r[0]: [] for r in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() AND schema_name = 'empty' "
        "ORDER BY table_name").fetchall()}
    files[REVERSE_VIEW] = []
    unreversed = []  # pair files of methods with a floor whose reverse file is missing: read with the floor's filter
    root = str(Path(tables_root).resolve()) if tables_root is not None else None
    if root is not None:
        for table, file, reverse, method in con.execute(
                "SELECT table_name, file, reverse_file, method FROM parts ORDER BY table_name, file").fetchall():
            files[table].append(f"{root}/{file}")
            if reverse is not None:
                files[REVERSE_VIEW].append(f"{root}/{reverse}")
            elif table == "matches" and method in FLOORS:
                unreversed.append(f"{root}/{file}")

    def read(paths):
        # hive_partitioning: the files sit in sae_a=/sae_b=/method= folders (parts.new_name), so a filter on those
        # columns skips other pairs' files unopened; no autocast keeps an id like '12' a VARCHAR
        return (f"SELECT * FROM read_parquet([{', '.join(map(literal, paths))}], hive_partitioning = true, "
                f"hive_types_autocast = false)")
    for table in files:
        body = read(files[table]) if files[table] else f"SELECT * FROM empty.{table.removesuffix('_by_b')}"
        if table == REVERSE_VIEW and unreversed:
            floor = "CASE method " + " ".join(f"WHEN '{m}' THEN {f}" for m, f in FLOORS.items()) + " END"
            body = (f"{body} UNION ALL " if files[table] else "") + f"{read(unreversed)} WHERE score >= {floor}"
        con.execute(f"CREATE OR REPLACE VIEW {table} AS {body}")
    con.execute("CREATE OR REPLACE TABLE files_root AS SELECT ?::VARCHAR AS root", [root])


def files_root(con) -> str | None:
    """The table-file folder the views name (None: no views over files yet)."""
    try:
        row = con.execute("SELECT root FROM files_root").fetchone()
    except Exception:  # an atlas from before table files
        return None
    return row[0] if row else None


def check_version(con, where: str) -> None:
    """Readers cannot upgrade (read-only): say what to do instead of failing on a missing table."""
    version = con.execute("SELECT max(version) FROM schema_version").fetchone()[0]
    if version != SCHEMA_VERSION:
        what = ("run `atlas migrate` to move its big tables into table files" if version == 4 else
                "run `atlas migrate` (or any job) to upgrade it in place") if version < SCHEMA_VERSION else \
            "upgrade feature-atlas"
        raise SchemaVersionError(f"{where}: atlas schema version {version}, this code serves version {SCHEMA_VERSION}; "
                                 f"{what}")
