// PROTOCOL §3: a gateway's event seq and audit head only grow. HistoryGuard
// tells a restored gateway (numbers going back, or the same audit entry with
// another hash) from what happens by design: events re-delivered, a
// retained status older than the events seen since, a status without seq.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { HistoryGuard, parseStatus } from '../../../simulators/control-plane.ts'

const ev = (seq: number, iat: number, jti = `gw1.${seq}.x${iat}`) => ({ seq, iat, jti })

test('events: growing seqs pass; a re-delivery (same jti, or an older one signed earlier) is not a rollback', () => {
  const g = new HistoryGuard()
  for (let s = 1; s <= 5; s++) assert.equal(g.event(ev(s, 100 + s)), null)
  assert.equal(g.event(ev(3, 103)), null, 'seen in this run, same jti')
  assert.equal(g.history.seq, 5)
  // Across runs only the last event is remembered: older ones coming again were signed before it.
  const next = new HistoryGuard(g.history)
  assert.equal(next.event(ev(5, 105)), null, 'the last one again')
  assert.equal(next.event(ev(2, 102)), null, 'an older one again, signed before the last')
  assert.equal(next.event(ev(6, 106)), null)
})

test('events: another event at a seq already seen, or a new one at a seq already passed, is a rollback; one warning, then the new baseline', () => {
  const g = new HistoryGuard()
  for (let s = 1; s <= 5; s++) g.event(ev(s, 100 + s))
  const r = g.event(ev(3, 200))
  assert.equal(r?.what, 'event-seq')
  assert.deepEqual([r?.remembered.seq, r?.seen.seq], [5, 3])
  assert.equal(g.event(ev(4, 201)), null, 'the restored gateway goes on from there')
  assert.equal(g.event(ev(5, 202)), null)

  const across = new HistoryGuard({ seq: 9, jti: 'gw1.9.a', iat: 500 })
  assert.equal(across.event(ev(9, 501, 'gw1.9.b'))?.what, 'event-seq', 'the same seq, another event')
  const later = new HistoryGuard({ seq: 9, jti: 'gw1.9.a', iat: 500 })
  assert.equal(later.event(ev(4, 600))?.what, 'event-seq', 'an old seq signed after the last event remembered')
})

test('status: audit head back, or the same entry with another hash, is a rollback; a stale retained seq is not, a live one below the events is', () => {
  const g = new HistoryGuard()
  assert.equal(g.status({ online: true, seq: 10, audit: { seq: 20, hash: 'h20' } }, false), null)
  for (let s = 11; s <= 15; s++) g.event(ev(s, 100 + s))
  // The retained status is the one published at connect, before events 11..15: no rollback.
  const stale = new HistoryGuard(g.history)
  assert.equal(stale.status({ online: true, seq: 10, audit: { seq: 20, hash: 'h20' } }, true), null)
  // The will and older gateways carry no numbers.
  assert.equal(stale.status({ online: false }, false), null)
  assert.equal(stale.status({ online: true, version: '0.1.0' }, true), null)

  const live = new HistoryGuard(g.history)
  const r1 = live.status({ online: true, seq: 12, audit: { seq: 25, hash: 'h25' } }, false)
  assert.deepEqual([r1?.what, r1?.remembered.seq, r1?.seen.seq], ['status-seq', 15, 12])
  assert.equal(live.event(ev(13, 300)), null, 'after the warning the new numbers are the baseline')

  const back = new HistoryGuard(g.history)
  const r2 = back.status({ online: true, seq: 15, audit: { seq: 18, hash: 'h18' } }, true)
  assert.deepEqual([r2?.what, r2?.remembered, r2?.seen], ['audit-head', { seq: 20, hash: 'h20' }, { seq: 18, hash: 'h18' }])
  assert.equal(back.status({ online: true, seq: 15, audit: { seq: 18, hash: 'h18' } }, true), null, 'once')

  const fork = new HistoryGuard(g.history)
  assert.equal(fork.status({ online: true, seq: 16, audit: { seq: 20, hash: 'other' } }, false)?.what, 'audit-head')
  assert.equal(new HistoryGuard(g.history).status({ online: true, seq: 9 }, true)?.what, 'status-seq', 'retained, below the last status')
})

test('parseStatus: the §3 shape, fields of the wrong type left out, anything else null', () => {
  assert.deepEqual(parseStatus('{"online":true,"version":"1.2.0","seq":7,"audit":{"seq":3,"hash":"ab"}}'), { online: true, version: '1.2.0', seq: 7, audit: { seq: 3, hash: 'ab' } })
  assert.deepEqual(parseStatus('{"online":false}'), { online: false })
  assert.deepEqual(parseStatus('{"online":true,"seq":-1,"audit":{"seq":"3"}}'), { online: true })
  for (const bad of ['', 'null', '[]', '{"online":"yes"}', '{']) assert.equal(parseStatus(bad), null, bad)
})
