// The table-building side of `npm run reliability` (scripts/reliability.ts).
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { buildReport, cell, parseFigures, type ReportInput } from '../../../scripts/reliability.ts'

const base: ReportInput = {
  figures: [
    { area: 'uplink chaos', test: 'broker kills', size: '6 kills', result: 'all events arrived', pass: true },
    { area: 'fuzzing', test: 'JWS parser', size: '10,000 inputs', result: 'a | b\nc', pass: true },
  ],
  tests: [
    { file: 'test/reliability/b.test.ts', name: 'second', durationMs: 1500, pass: true },
    { file: 'test/reliability/a.test.ts', name: 'first', durationMs: 250, pass: true },
  ],
  scale: 4,
  date: new Date('2026-11-23T12:00:00.123Z'),
  machine: { cpus: 2, cpuModel: 'Test CPU', node: 'v20.0.0', os: 'linux 6' },
  durationMs: 61_000,
}

test('the report: verdict, machine, date, how to reproduce, one row per figure (by area) and per test (by file)', () => {
  const md = buildReport(base)
  assert.match(md, /^# Reliability figures/)
  assert.match(md, /Do not edit by hand/)
  assert.match(md, /\*\*all 2 tests passed\*\*, at scale 4, in 61 s/)
  assert.match(md, /Run 2026-11-23T12:00:00Z on 2 CPUs \(Test CPU\), Node v20\.0\.0, linux 6\./)
  assert.match(md, /npm run reliability -- --scale 1/)
  const rows = md.split('\n').filter((l) => l.startsWith('| ') && !l.startsWith('| ---'))
  assert.deepEqual(rows, [
    '| Area | Test | Size | Result | Pass |',
    '| fuzzing | JWS parser | 10,000 inputs | a \\| b c | pass |',
    '| uplink chaos | broker kills | 6 kills | all events arrived | pass |',
    '| File | Test | Time | Result |',
    '| test/reliability/a.test.ts | first | 0.3 s | pass |',
    '| test/reliability/b.test.ts | second | 1.5 s | pass |',
  ])
})

test('a failed test or figure makes the verdict FAILED and shows its error', () => {
  const md = buildReport({ ...base, tests: [...base.tests, { file: 'test/fuzz/x.test.ts', name: 'x', durationMs: 10, pass: false, error: 'boom' }] })
  assert.match(md, /\*\*1 FAILED \(of 3 tests and 2 figures\)\*\*/)
  assert.match(md, /\| test\/fuzz\/x\.test\.ts \| x \| 0\.0 s \| \*\*FAIL\*\*: boom \|/)
  const md2 = buildReport({ ...base, figures: [{ ...base.figures[0]!, pass: false }] })
  assert.match(md2, /1 FAILED/)
  assert.match(md2, /\| \*\*FAIL\*\* \|/)
})

test('figures lines: parsed in order, blank lines ignored, anything else is an error naming its line', () => {
  const line = JSON.stringify({ area: 'secrets', test: 't', size: 's', result: 'r', pass: true, at: '2026-11-23T00:00:00Z' })
  assert.deepEqual(parseFigures(`${line}\n\n${line}\n`), [
    { area: 'secrets', test: 't', size: 's', result: 'r', pass: true },
    { area: 'secrets', test: 't', size: 's', result: 'r', pass: true },
  ])
  assert.throws(() => parseFigures(`${line}\n{"area":"x"}\n`), /figures line 2 is not a figure/)
  assert.equal(cell(' a\n  b | c '), 'a b \\| c')
})
