// validate_k8s.mjs -- offline validation of the rendered Kubernetes manifests
// (deploy/k8s, rendered by `kubectl kustomize`; `make validate` does both).
//
//   node tests/tools/validate_k8s.mjs [--self-test] [--gpu|--cpu|--schema-only] FILE...
//
// Each FILE is multi-document YAML. The mode flag applies to the files after
// it: --gpu / --cpu files are a whole deployment (an overlay's output) and are
// checked against the schemas AND the project's invariants, with shards
// expected on GPUs (--gpu) or on the CPU (--cpu); --schema-only files (e.g.
// deploy/k8s/examples) only against the schemas.
//
// Schemas: every object by apiVersion/kind with kubernetes-models (the
// Kubernetes OpenAPI schemas compiled to validators), plus a strict pass that
// rejects fields the schema does not know (a typo such as `readinesProbe`
// would otherwise be dropped silently by the schemas, which allow extra
// fields; kubectl's strict field validation refuses it).
//
// Invariants (what `kubectl apply` would accept but the daemon would not
// survive): the coordinator's --shards lists exactly the StatefulSet's
// replicas, in order 0..n-1, by the headless Service's stable names, on the
// shards' port; every container has readiness and liveness probes on
// /v1/health port 8080 (shards also a startup probe); shards ask for
// nvidia.com/gpu: 1 in GPU mode and none in CPU mode, with a matching
// --device; the coordinator has no --data and no GPU; both read the same
// token Secret; the shard PodDisruptionBudget lets exactly one shard go.
//
// --self-test: the same files, unmutated, must pass; then each is mutated in
// memory (wrong shard count, a probe missing, ...) and every mutation must
// be rejected by the check it targets. Fully offline.
import { parseAllDocuments } from 'yaml';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const modelsVersion = JSON.parse(
  fs.readFileSync(path.join(here, 'node_modules', 'kubernetes-models', 'package.json'), 'utf8'),
).version;

// ---- names the manifests are held to ----------------------------------------
const SHARD_STS = 'deepeverest-shard';
const SHARD_SVC = 'deepeverest-shard';
const COORD_DEPLOY = 'deepeverest-coordinator';
const COORD_SVC = 'deepeverest';
const PORT = 8080;
const HEALTH = '/v1/health';
const GPU = 'nvidia.com/gpu';
const MIN_GRACE_S = 40; // the daemon drains for up to 30 s on SIGTERM
const MIN_STARTUP_S = 120; // a shard loads its models before it listens
const BOOL_FLAGS = new Set(['--coordinator', '--stat', '--routes', '--help']);

// ---- schema validation ------------------------------------------------------
const modelCache = new Map();
async function modelFor(apiVersion, kind) {
  const key = `${apiVersion}/${kind}`;
  if (!modelCache.has(key)) {
    let cls = null;
    if (typeof apiVersion === 'string' && typeof kind === 'string' && /^[a-z0-9.]*\/?v[0-9a-z]+$/.test(apiVersion)) {
      try {
        const mod = await import(`kubernetes-models/${apiVersion}`);
        cls = typeof mod[kind] === 'function' ? mod[kind] : null;
      } catch {
        cls = null;
      }
    }
    modelCache.set(key, cls);
  }
  return modelCache.get(key);
}

function schemaErrors(Cls, obj) {
  try {
    new Cls(obj).validate();
    return [];
  } catch (err) {
    if (Array.isArray(err.errors)) return err.errors;
    return [{ instancePath: '', message: err.message }];
  }
}

const isObj = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
const ptr = (parts) => parts.map((p) => '/' + String(p).replace(/~/g, '~0').replace(/\//g, '~1')).join('');
const dotted = (parts) =>
  parts.reduce((s, p) => (typeof p === 'number' ? `${s}[${p}]` : s ? `${s}.${p}` : String(p)), '');

// Fields the schema does not know: a known field given a value of the wrong
// type makes the validator complain at (or under) its path; an unknown one
// does not. Each field is probed that way on a copy, and known objects and
// arrays are walked into.
function unknownFields(Cls, obj) {
  const root = structuredClone(obj);
  const found = [];
  const complainsAt = (parts) => {
    const p = ptr(parts);
    return schemaErrors(Cls, root).some((e) => e.instancePath === p || e.instancePath.startsWith(p + '/'));
  };
  const walk = (node, parts) => {
    if (Array.isArray(node)) {
      node.forEach((el, i) => {
        if (isObj(el) || Array.isArray(el)) walk(el, [...parts, i]);
      });
      return;
    }
    for (const key of Object.keys(node)) {
      if (parts.length === 0 && (key === 'apiVersion' || key === 'kind')) continue;
      const orig = node[key];
      node[key] = isObj(orig) ? 'not-an-object' : { 'not-a-scalar': true };
      const known = complainsAt([...parts, key]);
      node[key] = orig;
      if (!known) found.push(dotted([...parts, key]));
      else if (isObj(orig) || Array.isArray(orig)) walk(orig, [...parts, key]);
    }
  };
  walk(root, []);
  return found;
}

const label = (o) => `${o?.kind ?? '?'}/${o?.metadata?.name ?? '?'}`;

async function checkSchemas(objs) {
  const errors = [];
  const seen = new Set();
  for (const o of objs) {
    if (!isObj(o)) {
      errors.push(`schema: a document is not an object`);
      continue;
    }
    const Cls = await modelFor(o.apiVersion, o.kind);
    if (!Cls) {
      errors.push(`schema: ${label(o)}: unknown apiVersion/kind ${o.apiVersion}/${o.kind}`);
      continue;
    }
    const id = `${o.apiVersion}|${o.kind}|${o.metadata?.namespace ?? ''}|${o.metadata?.name}`;
    if (seen.has(id)) errors.push(`schema: ${label(o)}: defined twice`);
    seen.add(id);
    const errs = schemaErrors(Cls, o);
    for (const e of errs) errors.push(`schema: ${label(o)}: ${e.instancePath || '/'} ${e.message}`);
    if (!errs.length) for (const f of unknownFields(Cls, o)) errors.push(`schema: ${label(o)}: unknown field ${f}`);
    if (!o.metadata?.name) errors.push(`schema: ${label(o)}: no metadata.name`);
  }
  return errors;
}

// ---- helpers for the invariants ---------------------------------------------
const matches = (selector, labels) =>
  isObj(selector) && Object.keys(selector).length > 0 &&
  Object.entries(selector).every(([k, v]) => labels?.[k] === v);

// $(VAR) in args as Kubernetes expands it from the container's env: literal
// values are substituted, valueFrom ones are known only at run time.
function expandArgs(c, errors, who) {
  const env = new Map((c.env ?? []).map((e) => [e.name, e]));
  return (c.args ?? []).map((a) =>
    String(a).replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)/g, (m, name) => {
      if (m === '$$') return '$';
      const e = env.get(name);
      if (!e) {
        errors.push(`invariant: ${who}: args reference $(${name}), which is not in the container's env`);
        return m;
      }
      return 'value' in e ? String(e.value) : `<runtime:${name}>`;
    }),
  );
}

function parseFlags(args) {
  const flags = new Map();
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (!a.startsWith('--')) continue;
    const eq = a.indexOf('=');
    if (eq > 0) flags.set(a.slice(0, eq), a.slice(eq + 1));
    else if (BOOL_FLAGS.has(a)) flags.set(a, true);
    else flags.set(a, args[++i]);
  }
  return flags;
}

function portIs(port, c, want = PORT) {
  if (typeof port === 'number') return port === want;
  return (c.ports ?? []).some((p) => p.name === port && p.containerPort === want);
}

function checkProbes(c, who, errors, { startup }) {
  const kinds = ['readinessProbe', 'livenessProbe', ...(startup ? ['startupProbe'] : [])];
  for (const k of kinds) {
    const p = c[k];
    if (!p) {
      errors.push(`invariant: ${who}: no ${k}`);
      continue;
    }
    if (!p.httpGet) {
      errors.push(`invariant: ${who}: ${k} is not an httpGet on ${HEALTH}`);
      continue;
    }
    if (p.httpGet.path !== HEALTH) errors.push(`invariant: ${who}: ${k} path is ${p.httpGet.path}, not ${HEALTH}`);
    if (!portIs(p.httpGet.port, c)) errors.push(`invariant: ${who}: ${k} port is ${p.httpGet.port}, not ${PORT}`);
  }
  if (startup && c.startupProbe) {
    const p = c.startupProbe;
    const budget = (p.initialDelaySeconds ?? 0) + (p.failureThreshold ?? 3) * (p.periodSeconds ?? 10);
    if (budget < MIN_STARTUP_S)
      errors.push(`invariant: ${who}: startupProbe allows ${budget} s, under ${MIN_STARTUP_S} s to load the models`);
  }
}

function quantityBytes(q) {
  const m = /^([0-9.]+)([EPTGMK]i?|[kmu]?)$/.exec(String(q));
  if (!m) return NaN;
  const mult = { '': 1, k: 1e3, K: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18, Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60 };
  return Number(m[1]) * (mult[m[2]] ?? NaN);
}

// The Secret volume the token file comes from, and whether uid 10001 can read it.
function tokenSource(pod, c, file, who, errors) {
  if (typeof file !== 'string') {
    errors.push(`invariant: ${who}: no --token-file (mutations would be open to anyone)`);
    return null;
  }
  const dir = (m) => m.mountPath.replace(/\/?$/, '/');
  const mount = (c.volumeMounts ?? []).find((m) => (m.subPath ? file === m.mountPath : file.startsWith(dir(m))));
  const vol = mount && (pod.volumes ?? []).find((v) => v.name === mount.name);
  if (!vol?.secret) {
    errors.push(`invariant: ${who}: --token-file ${file} is not on a Secret volume`);
    return null;
  }
  const rel = mount.subPath ?? file.slice(dir(mount).length);
  const item = (vol.secret.items ?? []).find((it) => it.path === rel);
  const key = vol.secret.items ? item?.key : rel;
  if (!key) errors.push(`invariant: ${who}: --token-file ${file}: the Secret volume has no such file`);
  const mode = item?.mode ?? vol.secret.defaultMode ?? 0o644;
  const sc = pod.securityContext ?? {};
  const readable = mode & 0o004 || (mode & 0o040 && sc.fsGroup != null);
  if (!readable) errors.push(`invariant: ${who}: the token file (mode 0${mode.toString(8)}) is unreadable by a non-root user`);
  return { secret: vol.secret.secretName, key };
}

function nonRoot(pod, c, who, errors) {
  const ps = pod.securityContext ?? {};
  const cs = c.securityContext ?? {};
  const asNonRoot = cs.runAsNonRoot ?? ps.runAsNonRoot;
  const uid = cs.runAsUser ?? ps.runAsUser;
  if (asNonRoot !== true) errors.push(`invariant: ${who}: runAsNonRoot is not true`);
  if (uid === 0) errors.push(`invariant: ${who}: runAsUser is 0`);
  if ((cs.allowPrivilegeEscalation ?? true) !== false) errors.push(`invariant: ${who}: allowPrivilegeEscalation is not false`);
}

// ---- the project's invariants -----------------------------------------------
function checkInvariants(objs, mode) {
  const errors = [];
  const E = (m) => errors.push(`invariant: ${m}`);
  const all = (kind) => objs.filter((o) => isObj(o) && o.kind === kind);
  const one = (kind, name) => all(kind).find((o) => o.metadata?.name === name);
  const sts = one('StatefulSet', SHARD_STS);
  const dep = one('Deployment', COORD_DEPLOY);
  if (!sts) E(`no StatefulSet ${SHARD_STS}`);
  if (!dep) E(`no Deployment ${COORD_DEPLOY}`);
  if (!sts || !dep) return { errors, facts: {} };

  const ns = sts.metadata.namespace;
  for (const o of objs)
    if (isObj(o) && o.kind !== 'Namespace' && o.kind !== 'PersistentVolume' && o.metadata?.namespace !== ns)
      E(`${label(o)} is in namespace ${o.metadata?.namespace ?? '(none)'}, the shards in ${ns ?? '(none)'}`);

  const n = sts.spec.replicas ?? 1;
  const shardPod = sts.spec.template?.spec ?? {};
  const coordPod = dep.spec.template?.spec ?? {};
  const shardLabels = sts.spec.template?.metadata?.labels ?? {};
  const coordLabels = dep.spec.template?.metadata?.labels ?? {};
  const sc = shardPod.containers?.[0] ?? {};
  const cc = coordPod.containers?.[0] ?? {};
  const sWho = `StatefulSet/${SHARD_STS} container ${sc.name}`;
  const cWho = `Deployment/${COORD_DEPLOY} container ${cc.name}`;

  // The StatefulSet and its headless Service.
  if (sts.spec.podManagementPolicy !== 'Parallel') E(`StatefulSet/${SHARD_STS}: podManagementPolicy is not Parallel`);
  if (!(n >= 1)) E(`StatefulSet/${SHARD_STS}: replicas ${n}`);
  if (!matches(sts.spec.selector?.matchLabels, shardLabels)) E(`StatefulSet/${SHARD_STS}: selector does not match its pods`);
  if (matches(sts.spec.selector?.matchLabels, coordLabels)) E(`StatefulSet/${SHARD_STS}: selector also matches the coordinator pods`);
  if (!matches(dep.spec.selector?.matchLabels, coordLabels)) E(`Deployment/${COORD_DEPLOY}: selector does not match its pods`);
  if (matches(dep.spec.selector?.matchLabels, shardLabels)) E(`Deployment/${COORD_DEPLOY}: selector also matches the shard pods`);
  const svcName = sts.spec.serviceName;
  if (svcName !== SHARD_SVC) E(`StatefulSet/${SHARD_STS}: serviceName is ${svcName}, not ${SHARD_SVC}`);
  const hsvc = one('Service', svcName);
  if (!hsvc) E(`no Service ${svcName} (the StatefulSet's serviceName)`);
  else {
    if (hsvc.spec.clusterIP !== 'None') E(`Service/${svcName} is not headless (clusterIP: ${hsvc.spec.clusterIP ?? 'unset'}, not None)`);
    if (hsvc.spec.publishNotReadyAddresses === true) E(`Service/${svcName}: publishNotReadyAddresses is true (an unready shard would resolve)`);
    if (!matches(hsvc.spec.selector, shardLabels)) E(`Service/${svcName}: selector does not match the shard pods`);
    if (matches(hsvc.spec.selector, coordLabels)) E(`Service/${svcName}: selector matches the coordinator pods`);
    if (!(hsvc.spec.ports ?? []).some((p) => p.port === PORT && portIs(p.targetPort ?? p.port, sc)))
      E(`Service/${svcName}: no port ${PORT} to the shards' ${PORT}`);
  }
  const csvc = one('Service', COORD_SVC);
  if (!csvc) E(`no Service ${COORD_SVC} in front of the coordinators`);
  else {
    if (csvc.spec.clusterIP === 'None') E(`Service/${COORD_SVC} is headless`);
    if (!matches(csvc.spec.selector, coordLabels)) E(`Service/${COORD_SVC}: selector does not match the coordinator pods`);
    if (matches(csvc.spec.selector, shardLabels)) E(`Service/${COORD_SVC}: selector matches the shard pods`);
    if (!(csvc.spec.ports ?? []).some((p) => portIs(p.targetPort ?? p.port, cc)))
      E(`Service/${COORD_SVC}: no port to the coordinators' ${PORT}`);
  }

  // The image's entrypoint runs (deepeverestd); the args choose the role.
  for (const [c, who] of [[sc, sWho], [cc, cWho]])
    if (c.command && !(c.command.length === 1 && /(^|\/)deepeverestd$/.test(c.command[0])))
      E(`${who}: command ${JSON.stringify(c.command)} replaces the deepeverestd entrypoint`);
  // Args (after $(VAR) expansion).
  const sFlags = parseFlags(expandArgs(sc, errors, sWho));
  const cFlags = parseFlags(expandArgs(cc, errors, cWho));

  // The coordinator.
  if (!cFlags.has('--coordinator')) E(`${cWho}: no --coordinator`);
  if (cFlags.has('--data')) E(`${cWho}: a coordinator holds no data, yet has --data ${cFlags.get('--data')}`);
  if (cFlags.get('--listen') !== `0.0.0.0:${PORT}`) E(`${cWho}: --listen ${cFlags.get('--listen')}, not 0.0.0.0:${PORT}`);
  const shards = cFlags.get('--shards');
  let urls = [];
  if (typeof shards !== 'string' || shards.includes('<runtime:')) E(`${cWho}: --shards is not a literal list (${shards})`);
  else {
    urls = shards.split(',');
    if (urls.length !== n)
      E(`${cWho}: --shards lists ${urls.length} shard(s) but StatefulSet/${SHARD_STS} has replicas ${n}`);
    urls.forEach((u, i) => {
      const host = `${SHARD_STS}-${i}\\.${svcName}`;
      const long = ns ? `(\\.${ns}\\.svc(\\.[a-z0-9.-]+)?)?` : '';
      const re = new RegExp(`^http://${host}${long}:${PORT}/?$`);
      if (!re.test(u))
        E(`${cWho}: --shards entry ${i} is ${u}, expected http://${SHARD_STS}-${i}.${svcName}:${PORT}` +
          `${ns ? ` (or .${ns}.svc.cluster.local)` : ''}: the list is in shard order 0..n-1 by the headless Service`);
    });
  }
  for (const c of coordPod.containers ?? [])
    for (const where of ['requests', 'limits'])
      if (c.resources?.[where]?.[GPU] != null) E(`Deployment/${COORD_DEPLOY} container ${c.name}: asks for ${GPU} (${where})`);

  // The shards.
  if (sFlags.has('--coordinator') || sFlags.has('--shards')) E(`${sWho}: has --coordinator/--shards`);
  if (sFlags.get('--listen') !== `0.0.0.0:${PORT}`) E(`${sWho}: --listen ${sFlags.get('--listen')}, not 0.0.0.0:${PORT}`);
  const data = sFlags.get('--data');
  const claims = new Map((sts.spec.volumeClaimTemplates ?? []).map((t) => [t.metadata?.name, t]));
  const dataMount = (sc.volumeMounts ?? []).find((m) => m.mountPath === data);
  if (typeof data !== 'string') E(`${sWho}: no --data`);
  else if (!dataMount || !claims.has(dataMount.name))
    E(`${sWho}: --data ${data} is not on a volumeClaimTemplate (a shard's store must persist)`);
  else if (dataMount.readOnly) E(`${sWho}: --data ${data} is mounted read-only`);
  const mapMb = Number(sFlags.get('--map-mb'));
  const dataClaim = dataMount && claims.get(dataMount.name);
  const volBytes = quantityBytes(dataClaim?.spec?.resources?.requests?.storage);
  if (Number.isFinite(mapMb) && Number.isFinite(volBytes) && mapMb * 2 ** 20 > volBytes)
    E(`${sWho}: --map-mb ${mapMb} is more than the data volume (${dataClaim.spec.resources.requests.storage})`);
  const root = sFlags.get('--import-root');
  const sharedMount = (sc.volumeMounts ?? []).find((m) => m.mountPath === root);
  const sharedVol = sharedMount && (shardPod.volumes ?? []).find((v) => v.name === sharedMount.name);
  if (typeof root !== 'string') E(`${sWho}: no --import-root (imports by path would read anywhere)`);
  else if (!sharedVol?.persistentVolumeClaim)
    E(`${sWho}: --import-root ${root} is not the shared PersistentVolumeClaim (every shard must see the same files)`);
  else {
    if (sharedMount.readOnly !== true) E(`${sWho}: the shared volume at ${root} is not mounted read-only`);
    const claim = sharedVol.persistentVolumeClaim.claimName;
    const pvc = one('PersistentVolumeClaim', claim);
    if (pvc && mode === 'gpu' && !(pvc.spec.accessModes ?? []).some((m) => m === 'ReadOnlyMany' || m === 'ReadWriteMany'))
      E(`PersistentVolumeClaim/${claim}: accessModes ${pvc.spec.accessModes} cannot be mounted by shards on several nodes`);
  }
  const device = sFlags.get('--device') ?? 'auto';
  const gpuReq = sc.resources?.requests?.[GPU];
  const gpuLim = sc.resources?.limits?.[GPU];
  if (mode === 'gpu') {
    if (String(gpuLim) !== '1') E(`${sWho}: limits ${GPU} is ${gpuLim ?? 'unset'}, not 1 (GPU mode)`);
    if (gpuReq != null && String(gpuReq) !== '1') E(`${sWho}: requests ${GPU} is ${gpuReq}, not 1`);
    if (device === 'cpu') E(`${sWho}: --device cpu beside a GPU`);
    if (!(shardPod.tolerations ?? []).some((t) => t.key === GPU && (t.effect ?? 'NoSchedule') === 'NoSchedule'))
      E(`StatefulSet/${SHARD_STS}: no toleration for ${GPU} NoSchedule (GPU nodes are tainted)`);
  } else if (mode === 'cpu') {
    if (gpuReq != null || gpuLim != null) E(`${sWho}: asks for ${GPU} (${gpuLim ?? gpuReq}) in CPU mode`);
    if (device !== 'cpu') E(`${sWho}: --device ${device}, not cpu (CPU mode)`);
  }
  for (const c of (shardPod.containers ?? []).slice(1))
    if (c.resources?.limits?.[GPU] != null) E(`StatefulSet/${SHARD_STS} container ${c.name}: a second container asks for ${GPU}`);

  // Both: probes, grace, non-root, the token, one image.
  const pods = [
    ['StatefulSet', SHARD_STS, shardPod, true],
    ['Deployment', COORD_DEPLOY, coordPod, false],
  ];
  for (const [kind, name, pod, startup] of pods) {
    for (const c of [...(pod.initContainers ?? []), ...(pod.containers ?? [])]) {
      const who = `${kind}/${name} container ${c.name}`;
      if ((pod.containers ?? []).includes(c)) checkProbes(c, who, errors, { startup: startup && c === pod.containers[0] });
      nonRoot(pod, c, who, errors);
    }
    const grace = pod.terminationGracePeriodSeconds ?? 30;
    if (grace < MIN_GRACE_S) E(`${kind}/${name}: terminationGracePeriodSeconds ${grace} < ${MIN_GRACE_S} (the daemon drains 30 s)`);
  }
  // Other workloads in the set get the probe rule too.
  for (const o of objs)
    if (isObj(o) && ['Deployment', 'StatefulSet', 'DaemonSet'].includes(o.kind) && o !== sts && o !== dep)
      for (const c of o.spec?.template?.spec?.containers ?? [])
        checkProbes(c, `${label(o)} container ${c.name}`, errors, { startup: false });
  const sTok = tokenSource(shardPod, sc, sFlags.get('--token-file'), sWho, errors);
  const cTok = tokenSource(coordPod, cc, cFlags.get('--token-file'), cWho, errors);
  if (sTok && cTok && (sTok.secret !== cTok.secret || sTok.key !== cTok.key))
    E(`the coordinator reads the token from Secret ${cTok.secret} key ${cTok.key}, the shards from ${sTok.secret} key ${sTok.key}`);
  const secret = sTok && one('Secret', sTok.secret);
  if (secret && !(secret.data?.[sTok.key] || secret.stringData?.[sTok.key])) E(`Secret/${sTok.secret} has no key ${sTok.key}`);
  if (sc.image !== cc.image) E(`the shards run ${sc.image}, the coordinators ${cc.image}: one image serves both roles`);

  // The shard PodDisruptionBudget: exactly one shard may go.
  const pdbs = all('PodDisruptionBudget').filter((p) => matches(p.spec?.selector?.matchLabels, shardLabels));
  if (!pdbs.length) E(`no PodDisruptionBudget selects the shard pods`);
  for (const p of pdbs) {
    const { maxUnavailable: mu, minAvailable: ma } = p.spec;
    const allowed = mu != null ? String(mu) === '1' : ma != null ? Number(ma) === n - 1 : false;
    if (!allowed)
      E(`PodDisruptionBudget/${p.metadata.name}: maxUnavailable ${mu ?? '-'} minAvailable ${ma ?? '-'} with ${n} shards; ` +
        `it must let exactly one shard go (maxUnavailable 1 or minAvailable ${n - 1}): 0 blocks every drain, more takes several shards at once`);
  }
  return {
    errors,
    facts: { n, svcName, urls, device, gpu: gpuLim ?? 0, containers: (shardPod.containers?.length ?? 0) + (coordPod.containers?.length ?? 0) },
  };
}

// ---- files ------------------------------------------------------------------
function readDocs(file) {
  const text = fs.readFileSync(file, 'utf8');
  const docs = parseAllDocuments(text, { version: '1.1' }); // kubectl reads YAML 1.1
  const errors = [];
  const objs = [];
  for (const d of docs) {
    for (const e of d.errors) errors.push(`yaml: ${file}: ${e.message}`);
    const v = d.toJS();
    if (v != null) objs.push(v);
  }
  return { objs, errors };
}

async function validateSet(objs, mode) {
  const errors = await checkSchemas(objs);
  if (mode === 'schema-only') return { errors, facts: {} };
  const inv = checkInvariants(objs, mode);
  return { errors: [...errors, ...inv.errors], facts: inv.facts };
}

// ---- self-test mutations ----------------------------------------------------
const find = (objs, kind, name) => objs.find((o) => o.kind === kind && o.metadata?.name === name);
const stsOf = (o) => find(o, 'StatefulSet', SHARD_STS);
const depOf = (o) => find(o, 'Deployment', COORD_DEPLOY);
const shardC = (o) => stsOf(o).spec.template.spec.containers[0];
const coordC = (o) => depOf(o).spec.template.spec.containers[0];
const envOf = (c, name) => c.env.find((e) => e.name === name);
const setEnvOrArg = (c, flag, value) => {
  // the flag's value: through its $(VAR) when it has one, else in args
  const i = c.args.indexOf(flag);
  const m = /^\$\((\w+)\)$/.exec(c.args[i + 1]);
  if (m) envOf(c, m[1]).value = value;
  else c.args[i + 1] = value;
};
const getShards = (o) => {
  const c = coordC(o);
  const v = c.args[c.args.indexOf('--shards') + 1];
  const m = /^\$\((\w+)\)$/.exec(v);
  return m ? envOf(c, m[1]).value : v;
};

const MUTATIONS = [
  ['shard count: StatefulSet replicas + 1, --shards unchanged', null,
    (o) => { stsOf(o).spec.replicas = (stsOf(o).spec.replicas ?? 1) + 1; }, /--shards lists \d+ shard\(s\) but .* has replicas/],
  ['shard count: last URL dropped from --shards (env)', null,
    (o) => { setEnvOrArg(coordC(o), '--shards', getShards(o).split(',').slice(0, -1).join(',')); }, /--shards lists \d+ shard\(s\) but/],
  ['shard count: --shards given in args with one URL too many', null,
    (o) => { const c = coordC(o); const u = getShards(o); c.args[c.args.indexOf('--shards') + 1] = `${u},${u.split(',')[0]}`; }, /--shards lists \d+ shard\(s\) but/],
  ['shard order: --shards entries 0 and 1 swapped', null,
    (o) => { const u = getShards(o).split(','); [u[0], u[1]] = [u[1], u[0]]; setEnvOrArg(coordC(o), '--shards', u.join(',')); }, /--shards entry 0 is .*shard order/],
  ['shard names: --shards through another Service', null,
    (o) => { setEnvOrArg(coordC(o), '--shards', getShards(o).replaceAll('.deepeverest-shard:', '.deepeverest:')); }, /--shards entry 0 is .*expected/],
  ['shard names: --shards without http://', null,
    (o) => { setEnvOrArg(coordC(o), '--shards', getShards(o).replaceAll('http://', '')); }, /--shards entry 0 is/],
  ['shard port: --shards on port 80', null,
    (o) => { setEnvOrArg(coordC(o), '--shards', getShards(o).replaceAll(':8080', ':80')); }, /--shards entry 0 is/],
  ['missing probe: shard readinessProbe removed', null,
    (o) => { delete shardC(o).readinessProbe; }, /StatefulSet\/deepeverest-shard container .*: no readinessProbe/],
  ['missing probe: shard startupProbe removed', null,
    (o) => { delete shardC(o).startupProbe; }, /no startupProbe/],
  ['missing probe: coordinator livenessProbe removed', null,
    (o) => { delete coordC(o).livenessProbe; }, /Deployment\/deepeverest-coordinator container .*: no livenessProbe/],
  ['probe path: shard liveness on /healthz', null,
    (o) => { shardC(o).livenessProbe.httpGet.path = '/healthz'; }, /livenessProbe path is \/healthz, not \/v1\/health/],
  ['probe port: coordinator readiness on 9090', null,
    (o) => { coordC(o).readinessProbe.httpGet.port = 9090; }, /readinessProbe port is 9090, not 8080/],
  ['startup budget: shard startupProbe of 30 s', null,
    (o) => { Object.assign(shardC(o).startupProbe, { failureThreshold: 3, periodSeconds: 10 }); }, /startupProbe allows 30 s/],
  ['coordinator run through a shell', null,
    (o) => { coordC(o).command = ['sh', '-c']; }, /replaces the deepeverestd entrypoint/],
  ['coordinator given --data /data', null,
    (o) => { coordC(o).args.push('--data', '/data'); }, /a coordinator holds no data, yet has --data/],
  ['coordinator asks for a GPU', null,
    (o) => { const r = coordC(o).resources; r.limits = { ...(r.limits ?? {}), [GPU]: 1 }; }, /Deployment\/deepeverest-coordinator container .*: asks for nvidia.com\/gpu/],
  ['GPU mode: nvidia.com/gpu limit removed from the shards', 'gpu',
    (o) => { delete shardC(o).resources.limits[GPU]; }, /limits nvidia.com\/gpu is unset, not 1/],
  ['GPU mode: shards with --device cpu', 'gpu',
    (o) => { setEnvOrArg(shardC(o), '--device', 'cpu'); }, /--device cpu beside a GPU/],
  ['GPU mode: toleration removed', 'gpu',
    (o) => { delete stsOf(o).spec.template.spec.tolerations; }, /no toleration for nvidia.com\/gpu/],
  ['CPU mode: shards ask for nvidia.com/gpu: 1', 'cpu',
    (o) => { const r = shardC(o).resources; r.limits = { ...(r.limits ?? {}), [GPU]: 1 }; }, /asks for nvidia.com\/gpu \(1\) in CPU mode/],
  ['CPU mode: shards with --device auto', 'cpu',
    (o) => { setEnvOrArg(shardC(o), '--device', 'auto'); }, /--device auto, not cpu/],
  ['GPU mode: shared claim ReadWriteOnce (one node only)', 'gpu',
    (o) => { find(o, 'PersistentVolumeClaim', 'deepeverest-shared').spec.accessModes = ['ReadWriteOnce']; }, /cannot be mounted by shards on several nodes/],
  ['shards without --import-root', null,
    (o) => { const c = shardC(o); const i = c.args.indexOf('--import-root'); c.args.splice(i, 2); }, /no --import-root/],
  ['args: $(VAR) with no env behind it', null,
    (o) => { const c = coordC(o); c.env = c.env.filter((e) => e.name !== 'DE_SHARDS'); }, /args reference \$\(DE_SHARDS\), which is not in the container's env|--shards is not a literal list/],
  ['PodDisruptionBudget maxUnavailable 0', null,
    (o) => { find(o, 'PodDisruptionBudget', SHARD_STS).spec.maxUnavailable = 0; }, /PodDisruptionBudget\/deepeverest-shard: maxUnavailable 0 .*exactly one shard/],
  ['PodDisruptionBudget minAvailable = replicas', null,
    (o) => { const s = find(o, 'PodDisruptionBudget', SHARD_STS).spec; delete s.maxUnavailable; s.minAvailable = stsOf(o).spec.replicas; }, /must let exactly one shard go/],
  ['headless Service given a cluster IP', null,
    (o) => { delete find(o, 'Service', SHARD_SVC).spec.clusterIP; }, /Service\/deepeverest-shard is not headless/],
  ['StatefulSet serviceName is another Service', null,
    (o) => { stsOf(o).spec.serviceName = COORD_SVC; }, /serviceName is deepeverest, not deepeverest-shard/],
  ['podManagementPolicy OrderedReady', null,
    (o) => { stsOf(o).spec.podManagementPolicy = 'OrderedReady'; }, /podManagementPolicy is not Parallel/],
  ['shard grace period 10 s', null,
    (o) => { stsOf(o).spec.template.spec.terminationGracePeriodSeconds = 10; }, /terminationGracePeriodSeconds 10 < 40/],
  ['shared volume mounted read-write', null,
    (o) => { shardC(o).volumeMounts.find((m) => m.mountPath === '/shared').readOnly = false; }, /shared volume at \/shared is not mounted read-only/],
  ['store on an emptyDir', null,
    (o) => { shardC(o).volumeMounts.find((v) => v.mountPath === '/data').name = 'tmp'; }, /--data \/data is not on a volumeClaimTemplate/],
  ['LMDB map larger than the data volume', null,
    (o) => { setEnvOrArg(shardC(o), '--map-mb', '1048576'); }, /--map-mb 1048576 is more than the data volume/],
  ['runAsNonRoot removed from the coordinator', null,
    (o) => { delete depOf(o).spec.template.spec.securityContext.runAsNonRoot; }, /Deployment\/deepeverest-coordinator container .*: runAsNonRoot is not true/],
  ['token: the coordinator reads another Secret', null,
    (o) => { depOf(o).spec.template.spec.volumes.find((v) => v.secret).secret.secretName = 'other-token'; }, /reads the token from Secret other-token/],
  ['token: file mode 0400 (root only)', null,
    (o) => { stsOf(o).spec.template.spec.volumes.find((v) => v.secret).secret.defaultMode = 0o400; }, /token file \(mode 0400\) is unreadable/],
  ['schema: replicas as a string', null,
    (o) => { stsOf(o).spec.replicas = String(stsOf(o).spec.replicas); }, /schema: StatefulSet\/deepeverest-shard: \/spec\/replicas must be integer/],
  ['schema: a typo, readinesProbe (unknown field)', null,
    (o) => { const c = shardC(o); c.readinesProbe = c.readinessProbe; delete c.readinessProbe; }, /unknown field spec\.template\.spec\.containers\[0\]\.readinesProbe/],
  ['schema: a Service port without its number', null,
    (o) => { delete find(o, 'Service', COORD_SVC).spec.ports[0].port; }, /schema: Service\/deepeverest: \/spec\/ports\/0 must have required property port/],
  ['schema: an unknown kind', null,
    (o) => { o.push({ apiVersion: 'v1', kind: 'Servce', metadata: { name: 'x' } }); }, /unknown apiVersion\/kind v1\/Servce/],
];

// ---- main -------------------------------------------------------------------
const argv = process.argv.slice(2);
let selfTest = false;
let mode = null;
const inputs = [];
for (const a of argv) {
  if (a === '--self-test') selfTest = true;
  else if (a === '--gpu') mode = 'gpu';
  else if (a === '--cpu') mode = 'cpu';
  else if (a === '--schema-only') mode = 'schema-only';
  else if (a.startsWith('-')) {
    console.error(`validate_k8s: unknown option ${a}`);
    process.exit(2);
  } else if (!mode) {
    console.error('validate_k8s: give --gpu, --cpu or --schema-only before the files');
    process.exit(2);
  } else inputs.push({ file: a, mode });
}
if (!inputs.length) {
  console.error('usage: node tests/tools/validate_k8s.mjs [--self-test] [--gpu|--cpu|--schema-only] FILE...');
  process.exit(2);
}

let failed = 0;
if (!selfTest) {
  for (const { file, mode: m } of inputs) {
    const { objs, errors: yerr } = readDocs(file);
    const { errors, facts } = await validateSet(objs, m);
    const all = [...yerr, ...errors];
    if (all.length) {
      failed++;
      console.error(`k8s: ${file}: ${all.length} problem(s):`);
      for (const e of all) console.error(`  ${e}`);
      continue;
    }
    const kinds = [...new Set(objs.map((o) => o.kind))].join(', ');
    console.log(`k8s: ${file}: ${objs.length} objects (${kinds}) valid against the Kubernetes schemas (kubernetes-models ${modelsVersion}), no unknown field`);
    if (m !== 'schema-only')
      console.log(`k8s: ${file}: invariants hold (${m}): ${facts.n} shards = --shards ${SHARD_STS}-0..${facts.n - 1}.${facts.svcName}:${PORT} in order; ` +
        `probes on ${HEALTH}:${PORT} in ${facts.containers} containers; --device ${facts.device}, ${GPU} ${facts.gpu}; no --data on the coordinator`);
  }
  process.exit(failed ? 1 : 0);
}

let passed = 0;
for (const { file, mode: m } of inputs) {
  const { objs, errors: yerr } = readDocs(file);
  const base = await validateSet(objs, m);
  if (yerr.length || base.errors.length) {
    failed++;
    console.error(`k8s self-test: ${file} (${m}): FAILED: the unmutated manifest does not pass:`);
    for (const e of [...yerr, ...base.errors]) console.error(`  ${e}`);
    continue;
  }
  passed++;
  console.log(`k8s self-test: ${file} (${m}): unmutated: valid`);
  if (m === 'schema-only') continue;
  for (const [name, only, mutate, expect] of MUTATIONS) {
    if (only && only !== m) continue;
    const copy = structuredClone(objs);
    let res;
    try {
      mutate(copy);
      res = await validateSet(copy, m);
    } catch (err) {
      failed++;
      console.error(`  FAILED   ${name}: the mutation itself threw: ${err.message}`);
      continue;
    }
    const hit = res.errors.find((e) => expect.test(e));
    if (hit) {
      passed++;
      console.log(`  rejected ${name}: ${hit}`);
    } else {
      failed++;
      console.error(`  FAILED   ${name}: not rejected as expected (${expect}); got: ${res.errors.length ? res.errors.join(' | ') : 'no error at all'}`);
    }
  }
}
console.log(`k8s self-test: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
