// PROTOCOL §5 topic rules as pure functions: wildcards reasoned level by level.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { aclCovers, cmdTopicOwner, filterCovers, mayPublish, mayReceive, maySubscribe, topicMatches } from '../../../protocols/mqtt/topic-rules.ts'

test('topicMatches follows MQTT 3.1.1 §4.7', () => {
  assert.ok(topicMatches('#', 'a/b'))
  assert.ok(topicMatches('a/#', 'a'))
  assert.ok(topicMatches('dev/+/tele/#', 'dev/x/tele/t'))
  assert.ok(!topicMatches('dev/+/tele/#', 'dev/x/cmd'))
  assert.ok(!topicMatches('#', '$SYS/x'))
  assert.ok(!topicMatches('+/x', '$SYS/x'))
  assert.ok(topicMatches('$SYS/#', '$SYS/x'))
})

test('filterCovers: an acl filter grants the filters it contains, nothing wider', () => {
  assert.ok(filterCovers('#', 'dev/+/tele/#'))
  assert.ok(filterCovers('dev/+/tele/#', 'dev/a/tele/#'))
  assert.ok(filterCovers('dev/+/tele/#', 'dev/+/tele'))
  assert.ok(!filterCovers('dev/+/tele/#', 'dev/#'))
  assert.ok(!filterCovers('dev/+/tele/#', 'dev/+/+/x'))
  assert.ok(!filterCovers('dev/a/tele', 'dev/+/tele'))
  assert.ok(!filterCovers('#', '$SYS/#'))
})

test('publish: own namespace but its cmd; no acl reaches another cmd or $SYS; renew/wipe-only: ack only', () => {
  assert.ok(mayPublish('a', 'full', undefined, 'dev/a/tele'))
  assert.ok(!mayPublish('a', 'full', undefined, 'dev/a/cmd'))
  assert.ok(!mayPublish('a', 'full', undefined, 'dev/a'))
  assert.ok(!mayPublish('a', 'full', undefined, 'dev/b/tele'))
  const acl = { publish: ['#', 'dev/+/#', 'dev/b/cmd'] }
  assert.ok(mayPublish('a', 'full', acl, 'dev/b/tele'))
  assert.ok(!mayPublish('a', 'full', acl, 'dev/b/cmd'))
  assert.ok(!mayPublish('a', 'full', { publish: ['$SYS/#'] }, '$SYS/x'))
  for (const r of ['renew-only', 'wipe-only'] as const) {
    assert.ok(mayPublish('a', r, acl, 'dev/a/ack'))
    assert.ok(!mayPublish('a', r, acl, 'dev/a/tele'))
  }
})

test('subscribe: own cmd always; acl filters for full rights; a named other cmd and $ never', () => {
  assert.ok(maySubscribe('a', 'wipe-only', undefined, 'dev/a/cmd'))
  assert.ok(!maySubscribe('a', 'wipe-only', { subscribe: ['#'] }, 'dev/a/tele'))
  assert.ok(!maySubscribe('a', 'full', undefined, 'dev/+/cmd'))
  assert.ok(maySubscribe('a', 'full', { subscribe: ['#'] }, 'dev/+/cmd'))
  assert.ok(!maySubscribe('a', 'full', { subscribe: ['#'] }, 'dev/b/cmd'))
  assert.ok(!maySubscribe('a', 'full', { subscribe: ['$SYS/#'] }, '$SYS/#'))
  assert.ok(maySubscribe('h', 'full', { subscribe: ['dev/+/tele/#'] }, 'dev/+/tele/#'))
  assert.ok(!maySubscribe('h', 'full', { subscribe: ['dev/+/tele/#'] }, 'dev/#'))
})

test('delivery strips other identities commands from wildcard subscriptions', () => {
  assert.equal(cmdTopicOwner('dev/x/cmd'), 'x')
  assert.equal(cmdTopicOwner('dev/x/y/cmd'), null)
  const all = { subscribe: ['#'] }
  assert.ok(mayReceive('x', 'full', undefined, 'dev/x/cmd'))
  assert.ok(!mayReceive('h', 'full', all, 'dev/x/cmd'))
  assert.ok(mayReceive('h', 'full', all, 'dev/x/cmd/more'))
})

test('delivery follows the receiver\'s rights and acl now (PROTOCOL §4), not those it subscribed with', () => {
  const hist = { subscribe: ['dev/+/tele/#'] }
  assert.ok(mayReceive('h', 'full', hist, 'dev/p/tele/t'))
  assert.ok(!mayReceive('h', 'wipe-only', hist, 'dev/p/tele/t'), 'a retiring historian gets its own commands only')
  assert.ok(mayReceive('h', 'wipe-only', hist, 'dev/h/cmd'))
  assert.ok(!mayReceive('h', 'renew-only', hist, 'dev/p/tele/t'))
  assert.ok(!mayReceive('h', 'full', { subscribe: ['dev/q/#'] }, 'dev/p/tele/t'), 'an acl narrowed since the subscription')
  assert.ok(!mayReceive('h', 'full', undefined, 'dev/p/tele/t'))
})

test('acl coverage: narrowing is seen filter by filter', () => {
  assert.ok(aclCovers({ subscribe: ['dev/#'] }, { subscribe: ['dev/+/tele/#'] }))
  assert.ok(aclCovers({ subscribe: ['dev/+/tele/#'] }, undefined))
  assert.ok(!aclCovers(undefined, { subscribe: ['dev/+/tele/#'] }))
  assert.ok(!aclCovers({ subscribe: ['dev/+/tele/a'] }, { subscribe: ['dev/+/tele/#'] }))
  assert.ok(!aclCovers({ subscribe: ['dev/#'] }, { publish: ['app/x'] }))
})

test('U+0000 in a topic name or filter is refused (MQTT 3.1.1 §4.7.3, PROTOCOL §5)', () => {
  assert.ok(!mayPublish('a', 'full', undefined, 'dev/a/te\u0000le'))
  assert.ok(!mayPublish('a', 'full', { publish: ['#'] }, 'x\u0000'))
  assert.ok(!maySubscribe('a', 'full', { subscribe: ['#'] }, 'dev/\u0000/#'))
})
