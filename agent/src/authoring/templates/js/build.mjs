// Build plugin.js into a component with the componentize-js library API
// (the `jco componentize` command fails with "os error 44"; the library
// works):
//
//   node build.mjs TOOLCHAIN_DIR OUT.wasm
//
// TOOLCHAIN_DIR holds the node_modules installed from package-lock.json
// (build.sh makes it).

import { readFile, writeFile, mkdir } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const [toolchain, out] = process.argv.slice(2);
if (!toolchain || !out) {
  console.error('usage: node build.mjs TOOLCHAIN_DIR OUT.wasm');
  process.exit(2);
}
const here = dirname(fileURLToPath(import.meta.url));
const pkgDir = join(resolve(toolchain), 'node_modules/@bytecodealliance/componentize-js');
const pkg = JSON.parse(await readFile(join(pkgDir, 'package.json'), 'utf8'));
const { componentize } = await import(pathToFileURL(join(pkgDir, pkg.exports.import)).href);

const { component } = await componentize({
  sourcePath: join(here, 'plugin.js'),
  witPath: join(here, 'wit'),
  worldName: '{{kind}}',
  // A plugin makes requests (wasi:http outgoing-handler); it serves none.
  disableFeatures: ['fetch-event'],
});
await mkdir(dirname(resolve(out)), { recursive: true });
await writeFile(out, component);
console.log(`componentize-js ${pkg.version}: wrote ${out} (${component.length} bytes)`);
