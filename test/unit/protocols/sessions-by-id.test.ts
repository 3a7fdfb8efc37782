import { test } from 'node:test'
import assert from 'node:assert/strict'
import { SessionsById } from '../../../protocols/mqtt/sessions-by-id.ts'

test('one session, then a second and a third, then each gone again', () => {
  const m = new SessionsById<object>()
  const [a, b, c] = [{ n: 1 }, { n: 2 }, { n: 3 }]
  assert.equal(m.count('d'), 0)
  assert.deepEqual(m.of('d'), [])
  m.add('d', a)
  m.add('d', a) // the same session twice is one
  assert.equal(m.count('d'), 1)
  assert.deepEqual(m.of('d'), [a])
  m.add('d', b)
  m.add('d', c)
  assert.equal(m.count('d'), 3)
  assert.deepEqual(new Set(m.of('d')), new Set([a, b, c]))
  assert.equal(m.delete('d', b), true)
  assert.equal(m.delete('d', b), false)
  assert.equal(m.count('d'), 2)
  assert.equal(m.delete('d', a), true)
  assert.deepEqual(m.of('d'), [c]) // back to one, kept as itself
  assert.equal(m.delete('d', a), false)
  assert.equal(m.delete('d', c), true)
  assert.equal(m.has('d'), false)
  assert.equal(m.count('d'), 0)
})

test('take empties an id; of is a copy; some; ids apart', () => {
  const m = new SessionsById<{ closed: boolean }>()
  const [a, b, x] = [{ closed: true }, { closed: false }, { closed: false }]
  m.add('d', a)
  assert.equal(m.some('d', (s) => !s.closed), false)
  m.add('d', b)
  m.add('e', x)
  assert.equal(m.some('d', (s) => !s.closed), true)
  const seen = m.of('d')
  m.delete('d', a)
  assert.equal(seen.length, 2)
  assert.deepEqual(m.take('d'), [b])
  assert.equal(m.has('d'), false)
  assert.deepEqual(m.take('d'), [])
  assert.deepEqual(m.of('e'), [x])
})
