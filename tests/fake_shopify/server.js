#!/usr/bin/env node
// A fake Shopify Admin GraphQL API for atpd's Shopify connector tests (issue
// #14, helpers' plan SHOPIFY.md). It checks every document and every variable
// against Shopify's published Admin schema, keeps per-location quantities,
// enforces changeFromQuantity, idempotency keys and the cost bucket, and
// injects throttles, 429s, 5xx, slow answers and downtime on request.
//
//   node tests/fake_shopify/server.js --port 0 --schema PATH --token TOKEN
//        [--restore-rate 1000] [--bucket-max 2000] [--version 2026-10]
//
// prints "listening <port>" on stdout when ready.
//
// What it relies on from Shopify's documentation (shopify.dev, read through the
// search tool on 2026-12-01), and where it had to choose:
//   - InventoryQuantityInput.changeFromQuantity (2026-04 and later): a
//     compare-and-swap on each quantity. It must be passed explicitly, even as
//     null ("Omitting changeFromQuantity returns an error"); null skips the
//     check. A mismatch fails with CHANGE_FROM_QUANTITY_STALE. The fake fails
//     the whole call then (nothing applied, inventoryAdjustmentGroup null, one
//     userError per stale quantity), and answers an omitted changeFromQuantity
//     with the schema's COMPARE_QUANTITY_REQUIRED userError, also applying
//     nothing. A position the fake holds no level for compares as 0 and is
//     created by the set (the 2026-10 schema no longer has
//     ITEM_NOT_STOCKED_AT_LOCATION); inventoryLevel answers null for it.
//   - @idempotent(key:) is mandatory on inventorySetQuantities from 2026-04
//     ("calling these mutations without an idempotency directive will result
//     in an error at runtime"; the schema does not mark it required, so
//     graphql-js validation alone cannot catch it). The fake answers a
//     top-level error with extensions.code IDEMPOTENCY_KEY_REQUIRED (the code
//     is the fake's; Shopify's message is not documented), also for an empty
//     or blank key ("cannot be an empty string or whitespace only"). A repeat
//     of a key with the same input answers the first answer again and applies
//     nothing ("It will return the result of the original operation"); with
//     another input it answers the userError IDEMPOTENCY_KEY_PARAMETER_MISMATCH
//     ("The same idempotency key cannot be used with different operation
//     parameters"); a repeat of a key whose first answer carried userErrors
//     answers IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED ("A previous request with
//     this idempotency key failed. Retry with a new idempotency key."), so a
//     client retrying after CHANGE_FROM_QUANTITY_STALE needs a new key. These
//     three codes are values of InventorySetQuantitiesUserErrorCode.
//   - Input lists hold at most 250 items: more is a top-level error
//     MAX_INPUT_SIZE_EXCEEDED, nothing applied.
//   - Rate limits (GraphQL Admin API rate limits page): a leaky bucket per app
//     and store, refilled continuously at the restore rate (Shopify Plus 1,000
//     points/s); the requested cost must be available before the query runs,
//     and the difference between requested and actual cost is refunded after.
//     Cost, as documented roughly: a scalar or enum field 0, an object 1, a
//     connection 2 plus `first` (or `last`) times the cost of one node (1 plus
//     the objects inside it), a mutation 10 (its payload is not charged). A
//     query over 1,000 requested points is refused with MAX_COST_EXCEEDED. The
//     actual cost counts the nodes a connection returned. Every executed answer
//     carries extensions.cost {requestedQueryCost, actualQueryCost,
//     throttleStatus {maximumAvailable, currentlyAvailable, restoreRate}}; a
//     throttle is {errors: [{message: "Throttled", extensions: {code:
//     "THROTTLED"}}], extensions: {cost}} with actualQueryCost null, over HTTP
//     200 (or 429 when the faults ask for it, with Retry-After).
//   - A bad access token: HTTP 401 {"errors": "[API] Invalid API key or access
//     token (unrecognized login or wrong password)"}. Another API version in
//     the path than the schema loaded: 404.
//   - Validation and variable coercion are graphql-js's (validate with the
//     specified rules, getVariableValues); their messages are graphql-js's,
//     not Shopify's, with extensions.code GRAPHQL_VALIDATION_FAILED or
//     INVALID_VARIABLE. Anything the fake does not implement (another root
//     field, a field of an implemented type that it does not fill) is a
//     GraphQL error naming it.
//
// Ids above 2^53 cannot pass through JSON.parse, so bodies have every integer
// literal of 16 digits or more turned into a string first: the control API
// accepts ids as integers, digit strings or GIDs, and a GraphQL ID given as a
// large integer stays exact (an Int that large fails coercion either way).
'use strict';

const http = require('http');
const fs = require('fs');
const path = require('path');
const zlib = require('zlib');

const ROOT = path.resolve(__dirname, '..', '..');
const graphql = require(path.join(ROOT, 'build', 'npm', 'node_modules', 'graphql'));

function parseArgs(argv) {
  const o = {port: 0, schema: null, token: null, restoreRate: 1000, bucketMax: 2000,
             version: '2026-10', host: '127.0.0.1'};
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i], v = argv[i + 1];
    switch (a) {
      case '--port': o.port = Number(v); i++; break;
      case '--schema': o.schema = v; i++; break;
      case '--token': o.token = v; i++; break;
      case '--restore-rate': o.restoreRate = Number(v); i++; break;
      case '--bucket-max': o.bucketMax = Number(v); i++; break;
      case '--version': o.version = v; i++; break;
      case '--host': o.host = v; i++; break;
      default: throw new Error('unknown argument ' + a);
    }
  }
  if (!o.schema) o.schema = path.join(ROOT, 'build', 'deps', 'shopify', 'admin_' + o.version + '.json.gz');
  if (!o.token) throw new Error('--token is required');
  return o;
}

const opts = parseArgs(process.argv);
const raw = fs.readFileSync(opts.schema);
const introspection = JSON.parse((opts.schema.endsWith('.gz') ? zlib.gunzipSync(raw) : raw).toString());
const schema = graphql.buildClientSchema(introspection.data || introspection);
const idempotentDirective = schema.getDirective('idempotent');
const IDEMPOTENCY_REQUIRED = opts.version >= '2026-04';
const MAX_QUERY_COST = 1000;
const MAX_INPUT = 250;
const MAX_PAGE = 250;
const LOG_MAX = 50000;
const REASONS = new Set(['correction', 'cycle_count_available', 'damaged', 'movement_created',
  'movement_updated', 'movement_received', 'movement_canceled', 'other', 'promotion',
  'quality_control', 'received', 'reservation_created', 'reservation_deleted',
  'reservation_updated', 'restock', 'safety_stock', 'shrinkage']);

// --- state -------------------------------------------------------------------

let S;
function freshState() {
  return {
    levels: new Map(), // "<item>:<loc>" -> quantity
    variants: [],      // [{variant_id, sku, inventory_item_id}] digit strings
    locations: [],     // [{id, name}]
    idem: new Map(),   // key -> {input, answer, failed}
    calls: 0, mutations: 0, throttled: 0, errors5xx: 0, idempotent_replays: 0, stale: 0,
    invalid: 0, unauthorized: 0, refused: 0, mismatches: 0, quantities_set: 0, groups: 0,
    faults: {throttle: 0, status429: 0, error5xx: 0, error_status: 503, slow_ms: 0,
             slow_count: 0, down: false},
    canned: [],        // [{operation, count, status, body}]: answers given as is
    bucket: {max: opts.bucketMax, rate: opts.restoreRate, available: opts.bucketMax, at: now()},
    log: [], n: 0,
  };
}
function now() { return Number(process.hrtime.bigint() / 1000000n); }
S = freshState();

function bucketLevel() {
  const b = S.bucket, t = now();
  b.available = Math.min(b.max, b.available + (t - b.at) * b.rate / 1000);
  b.at = t;
  return b.available;
}
function throttleStatus() {
  return {maximumAvailable: S.bucket.max, currentlyAvailable: Math.floor(bucketLevel()),
          restoreRate: S.bucket.rate};
}

// "gid://shopify/<Type>/<digits>", bare digits or an integer -> digit string, or null.
function idOf(v, type) {
  if (typeof v === 'number' && Number.isSafeInteger(v) && v > 0) return String(v);
  if (typeof v !== 'string') return null;
  if (/^[1-9][0-9]*$/.test(v)) return v;
  const m = /^gid:\/\/shopify\/([A-Za-z]+)\/([1-9][0-9]*)$/.exec(v);
  if (!m || (type && m[1] !== type)) return null;
  return m[2];
}
const gid = (type, id) => 'gid://shopify/' + type + '/' + id;

// --- bodies ------------------------------------------------------------------

function quoteBigInts(text) {
  return text.replace(/("(?:[^"\\]|\\.)*")|(?<![\d.eE+-])(-?\d{16,})(?![.\deE])/g,
                      (m, str, num) => (str !== undefined ? str : '"' + num + '"'));
}
function readBody(req) {
  return new Promise((resolve, reject) => {
    const parts = [];
    req.on('data', (c) => parts.push(c));
    req.on('end', () => resolve(Buffer.concat(parts).toString('utf8')));
    req.on('error', reject);
  });
}
function send(res, status, obj, headers) {
  const body = typeof obj === 'string' ? obj : JSON.stringify(obj);
  res.writeHead(status, Object.assign({'Content-Type': 'application/json; charset=utf-8',
                                       'Content-Length': Buffer.byteLength(body)}, headers || {}));
  res.end(body);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function record(entry) {
  entry.n = ++S.n;
  entry.at_ms = Date.now();
  S.log.push(entry);
  if (S.log.length > LOG_MAX) S.log.splice(0, S.log.length - LOG_MAX);
  return entry;
}

// --- cost ----------------------------------------------------------------------

function argValue(node, name, variables) {
  const a = (node.arguments || []).find((x) => x.name.value === name);
  if (!a) return undefined;
  return graphql.valueFromASTUntyped(a.value, variables);
}
function isConnection(type) {
  return graphql.isObjectType(type) && /Connection$/.test(type.name) &&
         ('nodes' in type.getFields() || 'edges' in type.getFields());
}
function fieldsOf(selectionSet, fragments, out) {
  for (const sel of selectionSet.selections) {
    if (sel.kind === 'Field') out.push(sel);
    else if (sel.kind === 'InlineFragment') fieldsOf(sel.selectionSet, fragments, out);
    else if (sel.kind === 'FragmentSpread' && fragments[sel.name.value])
      fieldsOf(fragments[sel.name.value].selectionSet, fragments, out);
  }
  return out;
}
// The cost of a selection on parentType; with data, connections count the nodes
// they returned (the actual cost), else `first` (the requested cost).
function selectionCost(selectionSet, parentType, ctx, data) {
  let cost = 0;
  if (!selectionSet || !graphql.isObjectType(parentType) && !graphql.isInterfaceType(parentType)) return 0;
  const defs = parentType.getFields();
  for (const f of fieldsOf(selectionSet, ctx.fragments, [])) {
    const def = defs[f.name.value];
    if (!def) continue;
    const type = graphql.getNamedType(def.type);
    if (graphql.isLeafType(type)) continue;
    const key = f.alias ? f.alias.value : f.name.value;
    const sub = data && typeof data === 'object' ? data[key] : undefined;
    if (isConnection(type)) {
      const cf = type.getFields();
      let perNode = 1, nodeType = null, nodeSel = null, returned;
      for (const inner of fieldsOf(f.selectionSet, ctx.fragments, [])) {
        const n = inner.name.value;
        if (n === 'nodes') { nodeType = graphql.getNamedType(cf.nodes.type); nodeSel = inner.selectionSet; }
        if (n === 'edges') {
          const et = graphql.getNamedType(cf.edges.type);
          const nodeF = fieldsOf(inner.selectionSet, ctx.fragments, []).find((x) => x.name.value === 'node');
          if (nodeF) { nodeType = graphql.getNamedType(et.getFields().node.type); nodeSel = nodeF.selectionSet; }
        }
      }
      if (nodeType) perNode = 1 + selectionCost(nodeSel, nodeType, ctx, null);
      const first = argValue(f, 'first', ctx.variables) ?? argValue(f, 'last', ctx.variables) ?? 0;
      if (sub && typeof sub === 'object') {
        const arr = sub.nodes || sub.edges;
        returned = Array.isArray(arr) ? arr.length : 0;
      }
      cost += 2 + (returned !== undefined ? returned : Number(first) || 0) * perNode;
    } else if (Array.isArray(sub)) {
      cost += 1 + (sub.length ? selectionCost(f.selectionSet, type, ctx, sub[0]) : 0);
    } else {
      cost += 1 + selectionCost(f.selectionSet, type, ctx, sub);
    }
  }
  return cost;
}
function operationCost(op, ctx, data) {
  if (op.operation === 'mutation') return 10 * fieldsOf(op.selectionSet, ctx.fragments, []).length;
  return selectionCost(op.selectionSet, schema.getQueryType(), ctx, data);
}

// --- resolvers -------------------------------------------------------------------

class Unimplemented extends Error {}

function levelNode(item, loc) {
  const key = item + ':' + loc;
  if (!S.levels.has(key)) return null;
  return {
    id: 'gid://shopify/InventoryLevel/' + loc + '?inventory_item_id=' + item,
    location: {id: gid('Location', loc)},
    item: {id: gid('InventoryItem', item)},
    quantities: ({names}) => names.map((name) => ({
      id: 'gid://shopify/InventoryQuantity/' + loc + '?inventory_item_id=' + item + '&name=' + name,
      name,
      quantity: name === 'available' || name === 'on_hand' ? S.levels.get(key) : 0,
      updatedAt: new Date().toISOString(),
    })),
  };
}
function inventoryItemNode(item) {
  const v = S.variants.find((x) => x.inventory_item_id === item);
  return {
    id: gid('InventoryItem', item),
    sku: v ? v.sku : null,
    tracked: true,
    inventoryLevel: ({locationId}) => {
      const loc = idOf(locationId, 'Location');
      if (!loc) throw new Error('Invalid global id \'' + locationId + '\'');
      return levelNode(item, loc);
    },
  };
}
function page(list, args, toNode) {
  if (args.last !== undefined && args.last !== null || args.before)
    throw new Unimplemented('the fake Shopify does not implement `last` and `before`');
  if (args.first === undefined || args.first === null)
    throw new Error('you must provide one of first or last');
  if (args.first > MAX_PAGE || args.first < 0)
    throw new Error('first must be between 0 and ' + MAX_PAGE);
  let start = 0;
  if (args.after) {
    const m = /^c:(\d+)$/.exec(Buffer.from(args.after, 'base64').toString());
    if (!m) throw new Error('Invalid cursor');
    start = Number(m[1]) + 1;
  }
  const slice = list.slice(start, start + args.first);
  const cur = (i) => Buffer.from('c:' + (start + i)).toString('base64');
  const nodes = slice.map(toNode);
  return {
    nodes,
    edges: nodes.map((node, i) => ({node, cursor: cur(i)})),
    pageInfo: {
      hasNextPage: start + slice.length < list.length,
      hasPreviousPage: start > 0,
      startCursor: slice.length ? cur(0) : null,
      endCursor: slice.length ? cur(slice.length - 1) : null,
    },
  };
}
function variantNode(v) {
  return {id: gid('ProductVariant', v.variant_id), sku: v.sku, legacyResourceId: v.variant_id,
          inventoryItem: inventoryItemNode(v.inventory_item_id)};
}

function userError(field, message, code) { return {field, message, code}; }

function setQuantities(input, key) {
  const fail = (errs) => ({inventoryAdjustmentGroup: null, userErrors: errs});
  const errs = [];
  if (input.name !== 'available' && input.name !== 'on_hand')
    errs.push(userError(['input', 'name'], 'The quantity name must be available or on_hand.', 'INVALID_NAME'));
  if (!REASONS.has(input.reason))
    errs.push(userError(['input', 'reason'], 'The reason is not a valid reason.', 'INVALID_REASON'));
  const seen = new Set(), parsed = [];
  input.quantities.forEach((q, i) => {
    const f = (name) => ['input', 'quantities', String(i), name];
    const item = idOf(q.inventoryItemId, 'InventoryItem');
    const loc = idOf(q.locationId, 'Location');
    if (!item) errs.push(userError(f('inventoryItemId'), 'The specified inventory item could not be found.', 'INVALID_INVENTORY_ITEM'));
    if (!loc) errs.push(userError(f('locationId'), 'The specified location could not be found.', 'INVALID_LOCATION'));
    if (!('changeFromQuantity' in q))
      errs.push(userError(f('changeFromQuantity'), 'changeFromQuantity must be given (null skips the check).', 'COMPARE_QUANTITY_REQUIRED'));
    if (Math.abs(q.quantity) >= 1000000000)
      errs.push(userError(f('quantity'), 'The quantity is out of range.', q.quantity > 0 ? 'INVALID_QUANTITY_TOO_HIGH' : 'INVALID_QUANTITY_TOO_LOW'));
    const k = item + ':' + loc;
    if (item && loc && seen.has(k))
      errs.push(userError(f('inventoryItemId'), 'The combination of inventoryItemId and locationId must be unique.', 'NO_DUPLICATE_INVENTORY_ITEM_ID_GROUP_ID_PAIR'));
    seen.add(k);
    parsed.push({key: k, item, loc, q});
  });
  if (errs.length) return fail(errs);
  const stale = [];
  parsed.forEach(({key: k, q}, i) => {
    const current = S.levels.has(k) ? S.levels.get(k) : 0;
    if (q.changeFromQuantity !== null && q.changeFromQuantity !== current)
      stale.push(userError(['input', 'quantities', String(i), 'changeFromQuantity'],
        'The specified changeFromQuantity does not match the persisted quantity.',
        'CHANGE_FROM_QUANTITY_STALE'));
  });
  if (stale.length) { S.stale++; return fail(stale); }
  const changes = parsed.map(({key: k, item, loc, q}) => {
    const before = S.levels.has(k) ? S.levels.get(k) : 0;
    S.levels.set(k, q.quantity);
    return {name: input.name, delta: q.quantity - before, quantityAfterChange: q.quantity,
            item: {id: gid('InventoryItem', item)}, location: {id: gid('Location', loc)}};
  });
  S.mutations++;
  S.quantities_set += parsed.length;
  const group = ++S.groups;
  return {
    inventoryAdjustmentGroup: {
      id: gid('InventoryAdjustmentGroup', group), createdAt: new Date().toISOString(),
      reason: input.reason, referenceDocumentUri: input.referenceDocumentUri ?? null,
      changes,
    },
    userErrors: [],
  };
}

const rootQuery = {
  inventoryItem: ({id}) => {
    const item = idOf(id, 'InventoryItem');
    if (!item) throw new Error('Invalid global id \'' + id + '\'');
    const known = S.variants.some((v) => v.inventory_item_id === item) ||
                  [...S.levels.keys()].some((k) => k.startsWith(item + ':'));
    return known ? inventoryItemNode(item) : null;
  },
  productVariants: (args) => {
    let list = S.variants;
    if (args.query) {
      const m = /^sku:(?:"([^"]*)"|'([^']*)'|(\S+))$/.exec(args.query.trim());
      if (!m) throw new Unimplemented('the fake Shopify implements only query: "sku:<sku>"');
      const sku = m[1] ?? m[2] ?? m[3];
      list = list.filter((v) => v.sku === sku);
    }
    return page(list, args, variantNode);
  },
  locations: (args) => page(S.locations, args, (l) => ({id: gid('Location', l.id), name: l.name,
                                                         isActive: true, legacyResourceId: l.id})),
};
const IMPLEMENTED = {query: new Set(Object.keys(rootQuery)), mutation: new Set(['inventorySetQuantities'])};

function fieldResolver(source, args, context, info) {
  if (info.parentType === schema.getMutationType()) {
    // Only inventorySetQuantities gets here (checked before execution).
    const node = info.fieldNodes[0];
    const dir = graphql.getDirectiveValues(idempotentDirective, node, info.variableValues);
    const key = dir ? dir.key : null;
    const input = args.input;
    const canon = JSON.stringify(input);
    if (key !== null && S.idem.has(key)) {
      const prior = S.idem.get(key);
      context.idempotencyKey = key;
      if (prior.input !== canon) {
        S.mismatches++;
        context.outcome = 'idempotency_mismatch';
        return {inventoryAdjustmentGroup: null, userErrors: [userError(['input'],
          'The same idempotency key cannot be used with different operation parameters.',
          'IDEMPOTENCY_KEY_PARAMETER_MISMATCH')]};
      }
      S.idempotent_replays++;
      if (prior.failed) {
        context.outcome = 'replay_failed';
        return {inventoryAdjustmentGroup: null, userErrors: [userError(null,
          'A previous request with this idempotency key failed. Retry with a new idempotency key.',
          'IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED')]};
      }
      context.outcome = 'replay';
      return prior.answer;
    }
    const answer = setQuantities(input, key);
    const failed = answer.userErrors.length > 0;
    context.outcome = failed ? (answer.userErrors[0].code === 'CHANGE_FROM_QUANTITY_STALE' ? 'stale' : 'user_error') : 'ok';
    if (key !== null) S.idem.set(key, {input: canon, answer, failed});
    return answer;
  }
  if (info.parentType === schema.getQueryType()) return rootQuery[info.fieldName](args);
  if (source === null || typeof source !== 'object') return null;
  if (!(info.fieldName in source)) {
    if (info.fieldName === '__typename') return info.parentType.name;
    throw new Unimplemented('the fake Shopify does not implement ' + info.parentType.name + '.' + info.fieldName);
  }
  const v = source[info.fieldName];
  return typeof v === 'function' ? v(args) : v;
}

// --- the GraphQL endpoint ------------------------------------------------------------

function gqlError(message, code, extra) {
  return Object.assign({message, extensions: Object.assign({code}, extra || {})});
}

async function graphqlEndpoint(req, res, version) {
  S.calls++;
  const entry = {operation: null, variables: null, idempotency_key: null, outcome: null, status: 200};
  const finish = (status, body, headers) => {
    entry.status = status;
    record(entry);
    send(res, status, body, headers);
  };
  const f = S.faults;
  if (f.down) {
    S.refused++;
    entry.outcome = 'down';
    record(entry);
    req.socket.destroy();
    return;
  }
  const text = await readBody(req);
  if (f.slow_ms > 0 && f.slow_count !== 0) {
    if (f.slow_count > 0) f.slow_count--;
    entry.slow_ms = f.slow_ms;
    await sleep(f.slow_ms);
    if (S.faults.down) { S.refused++; entry.outcome = 'down'; record(entry); req.socket.destroy(); return; }
  }
  if (version !== opts.version) {
    entry.outcome = 'not_found';
    return finish(404, {errors: 'Not Found'});
  }
  if (req.headers['x-shopify-access-token'] !== opts.token) {
    S.unauthorized++;
    entry.outcome = 'unauthorized';
    return finish(401, {errors: '[API] Invalid API key or access token (unrecognized login or wrong password)'});
  }
  // The body is JSON ({query, variables, operationName}); Shopify's
  // application/graphql form is not what atpd sends, so the fake refuses it.
  if (!/^application\/json\s*(;|$)/i.test(req.headers['content-type'] || '')) {
    S.invalid++;
    entry.outcome = 'invalid';
    entry.errors = ['Content-Type ' + (req.headers['content-type'] || 'missing')];
    return finish(400, {errors: 'Content-Type must be application/json'});
  }
  let body;
  try {
    body = JSON.parse(quoteBigInts(text));
    if (!body || typeof body !== 'object' || typeof body.query !== 'string') throw new Error('no query');
  } catch (e) {
    S.invalid++;
    entry.outcome = 'invalid';
    return finish(400, {errors: {query: 'Required parameter missing or invalid'}});
  }
  entry.variables = body.variables ?? null;
  entry.operation = body.operationName ?? null;
  if (f.error5xx > 0) {
    f.error5xx--;
    S.errors5xx++;
    entry.outcome = 'error5xx';
    return finish(f.error_status, {errors: 'Internal Server Error'});
  }
  const throttleAnswer = (requested, status) => {
    S.throttled++;
    entry.outcome = status === 429 ? 'status429' : 'throttled';
    return finish(status, {errors: [gqlError('Throttled', 'THROTTLED')],
                           extensions: {cost: {requestedQueryCost: requested, actualQueryCost: null,
                                               throttleStatus: throttleStatus()}}},
                  status === 429 ? {'Retry-After': '1'} : undefined);
  };
  let doc;
  try {
    doc = graphql.parse(body.query);
  } catch (e) {
    S.invalid++;
    entry.outcome = 'invalid';
    return finish(200, {errors: [gqlError(e.message, 'PARSE_ERROR', {locations: e.locations})]});
  }
  const verrs = graphql.validate(schema, doc);
  if (verrs.length) {
    S.invalid++;
    entry.outcome = 'invalid';
    entry.errors = verrs.map((e) => e.message);
    return finish(200, {errors: verrs.map((e) => gqlError(e.message, 'GRAPHQL_VALIDATION_FAILED', {locations: e.locations}))});
  }
  const op = graphql.getOperationAST(doc, body.operationName || undefined);
  if (!op) {
    S.invalid++;
    entry.outcome = 'invalid';
    return finish(200, {errors: [gqlError('An operation name is required when the document has several operations.', 'GRAPHQL_VALIDATION_FAILED')]});
  }
  entry.operation = op.name ? op.name.value : op.operation;
  // A canned answer (POST /_fake/canned) for this operation: shapes of
  // Shopify's answers the fake would not produce on its own.
  const can = S.canned.find((c) => c.operation === entry.operation && c.count !== 0);
  if (can) {
    if (can.count > 0) can.count--;
    entry.outcome = 'canned';
    return finish(can.status || 200, can.body);
  }
  const coerced = graphql.getVariableValues(schema, op.variableDefinitions || [], body.variables || {});
  if (coerced.errors) {
    S.invalid++;
    entry.outcome = 'invalid';
    entry.errors = coerced.errors.map((e) => e.message);
    return finish(200, {errors: coerced.errors.map((e) => gqlError(e.message, 'INVALID_VARIABLE', {locations: e.locations}))});
  }
  const fragments = {};
  for (const d of doc.definitions) if (d.kind === 'FragmentDefinition') fragments[d.name.value] = d;
  const ctx = {fragments, variables: coerced.coerced};
  // Root fields the fake does not implement, the mandatory @idempotent, and the
  // input size, all before anything is charged or applied.
  const roots = fieldsOf(op.selectionSet, fragments, []);
  const refuse = (message, code) => {
    S.invalid++;
    entry.outcome = 'invalid';
    entry.errors = [message];
    return finish(200, {errors: [gqlError(message, code)]});
  };
  for (const r of roots) {
    const name = r.name.value;
    if (name === '__typename' || name === '__schema' || name === '__type') continue;
    if (!IMPLEMENTED[op.operation] || !IMPLEMENTED[op.operation].has(name))
      return refuse('the fake Shopify does not implement ' + op.operation + ' field ' + name, 'NOT_IMPLEMENTED');
    if (name === 'inventorySetQuantities') {
      const dir = graphql.getDirectiveValues(idempotentDirective, r, coerced.coerced);
      if (dir) entry.idempotency_key = dir.key;
      if (IDEMPOTENCY_REQUIRED && (!dir || !dir.key.trim()))
        return refuse(dir ? 'The idempotency key cannot be an empty string or whitespace only.'
                          : 'The @idempotent directive is required for inventorySetQuantities from API version 2026-04.',
                      'IDEMPOTENCY_KEY_REQUIRED');
      const input = graphql.getArgumentValues(schema.getMutationType().getFields()[name], r, coerced.coerced).input;
      if (input.quantities.length > MAX_INPUT)
        return refuse('The input array size of ' + input.quantities.length +
                      ' is greater than the maximum allowed of ' + MAX_INPUT + '.', 'MAX_INPUT_SIZE_EXCEEDED');
    }
  }
  if (roots.filter((r) => r.name.value === 'inventorySetQuantities').length > 1)
    return refuse('the fake Shopify implements one inventorySetQuantities per document', 'NOT_IMPLEMENTED');
  let requested;
  try {
    requested = operationCost(op, ctx, null);
  } catch (e) {
    return refuse(e.message, 'NOT_IMPLEMENTED');
  }
  entry.requested_cost = requested;
  if (requested > MAX_QUERY_COST) {
    S.invalid++;
    entry.outcome = 'max_cost_exceeded';
    return finish(200, {errors: [gqlError('Query cost is ' + requested + ', which exceeds the single query max cost limit (' + MAX_QUERY_COST + ').',
                                          'MAX_COST_EXCEEDED', {cost: requested, maxCost: MAX_QUERY_COST})]});
  }
  if (f.status429 > 0) { f.status429--; return throttleAnswer(requested, 429); }
  if (f.throttle > 0) { f.throttle--; return throttleAnswer(requested, 200); }
  if (bucketLevel() < requested) return throttleAnswer(requested, 200);
  S.bucket.available -= requested;
  const context = {outcome: null, idempotencyKey: null};
  const result = graphql.execute({schema, document: doc, variableValues: body.variables || {},
                                  operationName: body.operationName || undefined,
                                  contextValue: context, fieldResolver});
  const actual = op.operation === 'mutation' ? requested : Math.min(requested, operationCost(op, ctx, result.data));
  S.bucket.available = Math.min(S.bucket.max, S.bucket.available + (requested - actual));
  entry.actual_cost = actual;
  entry.outcome = result.errors ? 'error' : (context.outcome || 'ok');
  const answer = {};
  if (result.errors) {
    entry.errors = result.errors.map((e) => e.message);
    answer.errors = result.errors.map((e) => {
      const j = e.toJSON ? e.toJSON() : {message: e.message};
      j.extensions = Object.assign({code: e.originalError instanceof Unimplemented ? 'NOT_IMPLEMENTED' : 'INTERNAL_SERVER_ERROR'}, j.extensions || {});
      return j;
    });
  }
  answer.data = result.data ?? null;
  answer.extensions = {cost: {requestedQueryCost: requested, actualQueryCost: actual,
                              throttleStatus: throttleStatus()}};
  return finish(200, answer);
}

// --- the control API ---------------------------------------------------------------

function stateView() {
  const levels = {};
  for (const [k, v] of S.levels) levels[k] = v;
  return {levels, calls: S.calls, mutations: S.mutations, throttled: S.throttled,
          errors5xx: S.errors5xx, idempotent_replays: S.idempotent_replays, stale: S.stale,
          invalid: S.invalid, unauthorized: S.unauthorized, refused: S.refused,
          mismatches: S.mismatches, quantities_set: S.quantities_set,
          faults: Object.assign({}, S.faults),
          bucket: {available: Math.floor(bucketLevel()), max: S.bucket.max, restore_rate: S.bucket.rate}};
}

function needId(v, type, what) {
  const id = idOf(v, type);
  if (!id) throw new Error(what + ' must be a positive integer, digits or a ' + type + ' GID: ' + JSON.stringify(v));
  return id;
}

async function control(req, res, url) {
  const route = req.method + ' ' + url.pathname;
  let body = {};
  if (req.method === 'POST') {
    const text = await readBody(req);
    try { body = text ? JSON.parse(quoteBigInts(text)) : {}; } catch (e) {
      return send(res, 400, {error: 'bad JSON: ' + e.message});
    }
  }
  try {
    switch (route) {
      case 'GET /_fake/state': return send(res, 200, stateView());
      case 'GET /_fake/log': {
        const since = Number(url.searchParams.get('since') || 0);
        return send(res, 200, S.log.filter((e) => e.n > since));
      }
      case 'POST /_fake/levels': {
        for (const l of body.levels || []) {
          const item = needId(l.inventory_item_id, 'InventoryItem', 'inventory_item_id');
          const loc = needId(l.location_id, 'Location', 'location_id');
          if (l.available === null) S.levels.delete(item + ':' + loc);
          else if (Number.isSafeInteger(l.available)) S.levels.set(item + ':' + loc, l.available);
          else throw new Error('available must be an integer or null');
        }
        return send(res, 200, stateView());
      }
      case 'POST /_fake/catalog': {
        if (body.variants) S.variants = body.variants.map((v) => ({
          variant_id: needId(v.variant_id, 'ProductVariant', 'variant_id'), sku: String(v.sku),
          inventory_item_id: needId(v.inventory_item_id, 'InventoryItem', 'inventory_item_id')}));
        if (body.locations) S.locations = body.locations.map((l) => ({
          id: needId(l.id, 'Location', 'id'), name: String(l.name)}));
        return send(res, 200, {variants: S.variants.length, locations: S.locations.length});
      }
      case 'POST /_fake/faults': {
        for (const k of Object.keys(body)) {
          if (!(k in S.faults)) throw new Error('unknown fault ' + k);
          S.faults[k] = k === 'down' ? Boolean(body[k]) : Number(body[k]);
        }
        if ('slow_ms' in body && !('slow_count' in body)) S.faults.slow_count = -1; // until cleared
        return send(res, 200, S.faults);
      }
      case 'POST /_fake/canned': {
        // {operation, body, status?, count?: N or -1 for until reset}; an
        // empty body clears them.
        if (!body.operation) S.canned = [];
        else S.canned.push({operation: String(body.operation), body: body.body ?? {},
                            status: Number(body.status || 200),
                            count: 'count' in body ? Number(body.count) : 1});
        return send(res, 200, {canned: S.canned.length});
      }
      case 'POST /_fake/config': {
        bucketLevel();
        if ('restore_rate' in body) S.bucket.rate = Number(body.restore_rate);
        if ('bucket_max' in body) S.bucket.max = Number(body.bucket_max);
        if ('bucket_available' in body) S.bucket.available = Number(body.bucket_available);
        S.bucket.available = Math.min(S.bucket.available, S.bucket.max);
        return send(res, 200, stateView().bucket);
      }
      case 'POST /_fake/reset': {
        S = freshState();
        return send(res, 200, stateView());
      }
      default: return send(res, 404, {error: 'no such control route ' + route});
    }
  } catch (e) {
    return send(res, 400, {error: e.message});
  }
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://fake');
  let p;
  if (url.pathname.startsWith('/_fake/')) p = control(req, res, url);
  else {
    const m = /^\/admin\/api\/([^/]+)\/graphql\.json$/.exec(url.pathname);
    if (m && req.method === 'POST') p = graphqlEndpoint(req, res, m[1]);
    else p = readBody(req).then(() => send(res, 404, {errors: 'Not Found'}));
  }
  p.catch((e) => {
    process.stderr.write('fake_shopify: ' + (e && e.stack || e) + '\n');
    if (!res.headersSent) send(res, 500, {errors: 'fake Shopify crashed: ' + e.message});
  });
});
server.keepAliveTimeout = 30000;
server.listen(opts.port, opts.host, () => {
  process.stdout.write('listening ' + server.address().port + '\n');
});
const stop = () => {
  server.close(() => process.exit(0));
  if (server.closeAllConnections) server.closeAllConnections();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
