// chat-client.d.ts against chat-client.js: the declarations compile, a UI
// written against them type-checks, and they declare what the module exports
// (every export, every public method of ChatClient), no more and no less.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import ts from 'typescript';
import { ROOT } from '../lib/harness.mjs';

const WEB = join(ROOT, 'chat-transport-ws', 'web');
const DTS = join(WEB, 'chat-client.d.ts');

test('the declarations and a UI written against them type-check under --strict', async () => {
  const tsc = join(ROOT, 'web-tests', 'node_modules', 'typescript', 'bin', 'tsc');
  const args = ['--strict', '--noEmit', '--target', 'es2020', '--module', 'es2020', '--moduleResolution', 'bundler',
    '--lib', 'es2020,dom', DTS, join(ROOT, 'web-tests', 'types', 'usage.ts')];
  try {
    await promisify(execFile)(process.execPath, [tsc, ...args]);
  } catch (err) {
    assert.fail(`tsc failed:\n${err.stdout}${err.stderr}`);
  }
});

test('the declarations name exactly what the module exports', async () => {
  const source = ts.createSourceFile(DTS, readFileSync(DTS, 'utf8'), ts.ScriptTarget.ES2020, true);
  const declared = new Set();
  const methods = new Set();
  for (const node of source.statements) {
    const exported = node.modifiers?.some((m) => m.kind === ts.SyntaxKind.ExportKeyword);
    if (!exported) continue;
    if (ts.isClassDeclaration(node) || ts.isFunctionDeclaration(node)) declared.add(node.name.text);
    if (ts.isClassDeclaration(node) && node.name.text === 'ChatClient') {
      for (const member of node.members) {
        if (ts.isMethodDeclaration(member) || ts.isGetAccessor(member)) methods.add(member.name.text);
        if (ts.isPropertyDeclaration(member) && member.name.text === 'outbox') methods.add('outbox');
      }
    }
  }
  const mod = await import(pathToFileURL(join(WEB, 'chat-client.js')).href);
  assert.deepEqual([...declared].sort(), Object.keys(mod).sort());
  const actual = Object.getOwnPropertyNames(mod.ChatClient.prototype).filter(
    (name) => name !== 'constructor' && !name.startsWith('_'),
  );
  assert.deepEqual([...methods].sort(), actual.sort());
});
