// Parses an AsyncAPI document with the official parser (@asyncapi/parser) and
// fails on any error-level diagnostic. Used by scripts/check-docs.sh.
import { Parser } from '@asyncapi/parser';
import fs from 'fs';

const file = process.argv[2];
const { document, diagnostics } = await new Parser().parse(fs.readFileSync(file, 'utf8'));
const errors = diagnostics.filter((d) => d.severity === 0);
for (const d of errors) {
  console.error(`${file}: ${d.code}: ${d.message} at ${JSON.stringify(d.path)}`);
}
if (errors.length || !document) process.exit(1);
console.log(`${file}: valid AsyncAPI ${document.version()} (${document.channels().length} channels, ${document.components().messages().length} messages)`);
