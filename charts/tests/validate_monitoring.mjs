// Validates Prometheus Operator objects (JSON array on stdin) against the CRD schemas of
// @kubernetes-models/prometheus-operator (pinned in schemas/package-lock.json, installed by
// `make monitoring-schemas`). Prints a JSON array: "" for a valid object, else the errors.
// Usage: node validate_monitoring.mjs <dir with node_modules>
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const root = process.argv[2];
const objects = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const obj of objects) {
  const [group, version] = obj.apiVersion.split("/");
  if (group !== "monitoring.coreos.com") {
    results.push(`not a Prometheus Operator object: ${obj.apiVersion}`);
    continue;
  }
  const file = join(root, "node_modules/@kubernetes-models/prometheus-operator", group, version, `${obj.kind}.js`);
  let Model;
  try {
    Model = (await import(pathToFileURL(file).href))[obj.kind];
  } catch (e) {
    results.push(`no schema for ${obj.apiVersion} ${obj.kind}: ${e.message}`);
    continue;
  }
  try {
    new Model(obj).validate();
    results.push("");
  } catch (e) {
    results.push(`${obj.kind}/${obj.metadata?.name}: ${e.message}`);
  }
}
process.stdout.write(JSON.stringify(results));
