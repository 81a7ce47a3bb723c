#!/usr/bin/env bash
# make demo: start deepeverestd on the demo model and Fashion-MNIST, build an
# index, run real queries, and leave the daemon running.
#   DE_PORT (default 8080), DE_DATA (default ./demo-data, wiped first),
#   DE_TRAIN=1 also imports the 60,000 training images (70,000 in all).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${DE_PORT:-8080}
DATA=${DE_DATA:-$PWD/demo-data}
URL="http://127.0.0.1:$PORT"
FM=/usr/share/datasets/fashion-mnist
j() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }
call() { # method path [json]
  local out; out=$(curl -sS -X "$1" "$URL$2" ${3:+-H 'Content-Type: application/json' -d "$3"})
  echo "$out"
}

if curl -s "$URL/v1/health" >/dev/null 2>&1; then
  echo "something already answers on $URL; stop it or set DE_PORT" >&2; exit 1
fi
rm -rf "$DATA"; mkdir -p "$DATA"
nohup ./build/deepeverestd --data "$DATA" --listen "127.0.0.1:$PORT" >"$DATA/daemon.log" 2>&1 &
echo $! >"$DATA/daemon.pid"
for _ in $(seq 100); do curl -s "$URL/v1/health" >/dev/null 2>&1 && break; sleep 0.1; done
echo "== health";   call GET /v1/health
echo "== register the demo model (models/fmnist_cnn.pt)"
call POST /v1/models "{\"name\":\"cnn\",\"path\":\"$PWD/models/fmnist_cnn.pt\"}" | j '", ".join(l["name"]+str(l["shape"]) for l in d["layers"])'
CLASSES='["T-shirt/top","Trouser","Pullover","Dress","Coat","Sandal","Shirt","Sneaker","Bag","Ankle boot"]'
echo "== import the Fashion-MNIST test set, with its class names"
call POST /v1/datasets "{\"name\":\"fmnist\",\"path\":\"$FM/t10k-images-idx3-ubyte.gz\",\"labels_path\":\"$FM/t10k-labels-idx1-ubyte.gz\",\"scale\":0.00392156862745098,\"mean\":0.2860,\"std\":0.3530,\"classes\":$CLASSES}" | j 'd["name"]+": "+str(d["count"])+" inputs, classes "+", ".join(d["classes"])' 
if [ "${DE_TRAIN:-0}" = 1 ]; then
  echo "== import the training set"
  call POST /v1/datasets "{\"name\":\"fmnist-train\",\"path\":\"$FM/train-images-idx3-ubyte.gz\",\"labels_path\":\"$FM/train-labels-idx1-ubyte.gz\",\"scale\":0.00392156862745098,\"mean\":0.2860,\"std\":0.3530,\"classes\":$CLASSES}" | j 'd["name"]+": "+str(d["count"])+" inputs"' 
fi
echo "== the most active neurons of a few inputs (layer fc1)"
for i in 0 1 2; do
  printf 'input %s: ' "$i"
  call GET "/v1/datasets/fmnist/inputs/$i/activations?model=cnn&layer=fc1&top=5" | j '"  ".join("#%d=%.3f" % (a["neuron"], a["value"]) for a in d)'
done
echo "== build the index of layers pool2 and fc1 (one pass)"
job=$(call POST /v1/indexes '{"model":"cnn","dataset":"fmnist","layers":["pool2","fc1"]}' | j 'd["job"]')
while :; do
  st=$(call GET "/v1/jobs/$job"); s=$(echo "$st" | j 'd["state"]')
  echo "   job $job: $s $(echo "$st" | j 'str(d["done"])+"/"+str(d["total"])')"
  [ "$s" = done ] || [ "$s" = failed ] && break; sleep 0.5
done
call GET /v1/indexes | j '"\n".join("   index %d %s: %s, %d bytes = %.1f%% of full materialization" % (x["id"], x["layer"], x["state"], x["bytes"], 100*x["ratio"]) for x in d["indexes"])'
top=$(call GET "/v1/datasets/fmnist/inputs/0/activations?model=cnn&layer=fc1&top=3" | python3 -c 'import json,sys; print(json.dumps([a["neuron"] for a in json.load(sys.stdin)]))')
echo "== top-10 inputs for neurons $top of fc1 (input 0's most active)"
call POST /v1/query/topk "{\"model\":\"cnn\",\"dataset\":\"fmnist\",\"layer\":\"fc1\",\"neurons\":$top,\"k\":10}" | j 'json.dumps(d["results"][:5])+" ...\n   stats: "+json.dumps(d["stats"])'
echo "== 10 nearest neighbours of input 0 in that group"
call POST /v1/query/knn "{\"model\":\"cnn\",\"dataset\":\"fmnist\",\"layer\":\"fc1\",\"neurons\":$top,\"k\":10,\"target\":0}" | j 'json.dumps(d["results"][:5])+" ...\n   stats: "+json.dumps(d["stats"])'
echo "== the same kNN again: served by the shared activation cache"
call POST /v1/query/knn "{\"model\":\"cnn\",\"dataset\":\"fmnist\",\"layer\":\"fc1\",\"neurons\":$top,\"k\":10,\"target\":0}" | j '"   stats: "+json.dumps(d["stats"])'
echo "== the model's predictions (one pass), its accuracy and most confused pair"
job=$(call POST /v1/predictions '{"model":"cnn","dataset":"fmnist"}' | j 'd["job"]')
while [ "$(call GET "/v1/jobs/$job" | j 'd["state"]')" = running ] || [ "$(call GET "/v1/jobs/$job" | j 'd["state"]')" = queued ]; do sleep 0.3; done
call GET /v1/predictions/cnn/fmnist | j '"   accuracy %.4f; most confused: %d %s predicted as %s" % ((d["accuracy"],) + max(((d["confusion"][t][p], d["classes"][t], d["classes"][p]) for t in range(10) for p in range(10) if t != p)))'
echo "== misclassified inputs nearest to the first misclassified one, in its top fc1 neurons"
mis=$(call GET "/v1/datasets/fmnist/inputs?model=cnn&misclassified=true&limit=1" | j 'd["inputs"][0]["id"]')
grp=$(call GET "/v1/datasets/fmnist/inputs/$mis/activations?model=cnn&layer=fc1&top=5" | python3 -c 'import json,sys; print(json.dumps([a["neuron"] for a in json.load(sys.stdin)]))')
call POST /v1/query/knn "{\"model\":\"cnn\",\"dataset\":\"fmnist\",\"layer\":\"fc1\",\"neurons\":$grp,\"k\":5,\"target\":$mis,\"metric\":\"cosine\",\"filter\":{\"misclassified\":true}}" | j '"\n".join("   input %d: a %s predicted %s (cosine distance %.4f)" % (r["input"], r["class"], r["predicted_class"], r["distance"]) for r in d["results"])'
echo "== where those neurons fire on input $mis (Grad-CAM at conv4): $URL/v1/datasets/fmnist/inputs/$mis/attribution.png?model=cnn&layer=fc1&neurons=$(echo "$grp" | tr -d '[] ')&method=gradcam"
call GET "/v1/datasets/fmnist/inputs/$mis/attribution?model=cnn&layer=fc1&neurons=$(echo "$grp" | tr -d '[] ')&method=gradcam" | j '"   %s map %s at %s, max %.4f" % (d["method"], d["shape"], d["cam_layer"], d["max"])'
echo
echo "deepeverestd is running at $URL/  (pid $(cat "$DATA/daemon.pid"), data $DATA, log $DATA/daemon.log)"
echo "try: curl -s $URL/v1/indexes    |    stop: kill \$(cat $DATA/daemon.pid)"
