// Compiles every contract in this directory with the pinned npm `solc` (soljson), reproducibly: fixed
// compiler version, optimizer settings and EVM version, no metadata hash (it would embed source paths and
// a content hash that changes with whitespace). Writes artifacts.json: {Contract: {abi, bytecode}}.
//   node contracts/build.js [--check]    (--check: compare with the committed artifacts.json, exit 1 on drift)
"use strict";
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const dir = __dirname;
const sources = {};
for (const file of fs.readdirSync(dir).filter((f) => f.endsWith(".sol")).sort()) {
  sources[file] = { content: fs.readFileSync(path.join(dir, file), "utf8") };
}
const input = {
  language: "Solidity",
  sources,
  settings: {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: "paris",
    metadata: { bytecodeHash: "none", appendCBOR: false },
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((e) => e.severity === "error");
if (errors.length) {
  for (const e of errors) console.error(e.formattedMessage);
  process.exit(1);
}
const artifacts = { compiler: solc.version(), contracts: {} };
for (const file of Object.keys(output.contracts).sort()) {
  for (const name of Object.keys(output.contracts[file]).sort()) {
    const c = output.contracts[file][name];
    artifacts.contracts[name] = { abi: c.abi, bytecode: "0x" + c.evm.bytecode.object };
  }
}
const text = JSON.stringify(artifacts, null, 1) + "\n";
const target = path.join(dir, "artifacts.json");
if (process.argv.includes("--check")) {
  const committed = fs.existsSync(target) ? fs.readFileSync(target, "utf8") : "";
  if (committed !== text) {
    console.error("contracts/artifacts.json does not match its sources: run node contracts/build.js");
    process.exit(1);
  }
  console.log("artifacts.json matches " + solc.version());
} else {
  fs.writeFileSync(target, text);
  console.log("wrote artifacts.json with " + solc.version());
}
