// PROTOCOL §5 topic rules of the site broker, as pure functions of the
// device id, its rights (§4) and its record's acl. The checks are on
// concrete topics where MQTT gives one (publish, forward); on filters only
// for subscribe, where wildcards are reasoned about level by level.
import type { Rights } from '../../agent/trust/rights.ts'

export interface TopicAcl {
  publish?: readonly string[] | undefined
  subscribe?: readonly string[] | undefined
}

/** The owner of a command topic `dev/<id>/cmd`, or null when the topic is not one. */
export function cmdTopicOwner(topic: string): string | null {
  if (!topic.startsWith('dev/') || !topic.endsWith('/cmd')) return null
  const id = topic.slice(4, -4)
  return id.length > 0 && !id.includes('/') ? id : null
}

/** [MQTT-4.7.1]: does a concrete topic match a filter? `$` topics never match a filter starting with a wildcard [MQTT-4.7.2-1]. */
export function topicMatches(filter: string, topic: string): boolean {
  if (topic.startsWith('$') && (filter.startsWith('+') || filter.startsWith('#'))) return false
  const f = filter.split('/')
  const t = topic.split('/')
  for (let i = 0; i < f.length; i++) {
    const level = f[i]!
    if (level === '#') return true // also matches the parent level [MQTT-4.7.1-2]
    if (i >= t.length) return false
    if (level !== '+' && level !== t[i]) return false
  }
  return f.length === t.length
}

/** Is every topic matched by `inner` also matched by `outer`? (filter containment, level by level) */
export function filterCovers(outer: string, inner: string): boolean {
  const o = outer.split('/')
  const n = inner.split('/')
  // a leading wildcard never matches a `$` level [MQTT-4.7.2-1]
  if (n[0]!.startsWith('$') && (o[0] === '+' || o[0] === '#')) return false
  for (let i = 0; i < o.length; i++) {
    const level = o[i]!
    if (level === '#') return true
    if (i >= n.length) return false
    const l = n[i]!
    if (l === '#') return false // inner reaches deeper than outer allows
    if (level === '+') continue
    if (l === '+' || l !== level) return false
  }
  return o.length === n.length
}

/** [MQTT-4.7.3-2], PROTOCOL §5: a topic name or filter holding U+0000 is refused. */
const hasNul = (s: string): boolean => s.includes('\u0000')

/** PROTOCOL §5 publish rule for a concrete topic (the will included). */
export function mayPublish(deviceId: string, rights: Rights, acl: TopicAcl | undefined, topic: string): boolean {
  if (topic.startsWith('$')) return false // no filter ever grants $SYS
  if (hasNul(topic)) return false
  if (cmdTopicOwner(topic) !== null) return false // nobody publishes a command but the gateway (its own cmd included)
  if (rights !== 'full') return topic === `dev/${deviceId}/ack` // renew-only, wipe-only
  const own = `dev/${deviceId}/`
  if (topic.startsWith(own) && topic.length > own.length) return true
  return acl?.publish?.some((f) => topicMatches(f, topic)) ?? false
}

/** PROTOCOL §5 subscribe rule for a filter; SUBACK 0x80 when false. */
export function maySubscribe(deviceId: string, rights: Rights, acl: TopicAcl | undefined, filter: string): boolean {
  if (filter === `dev/${deviceId}/cmd`) return true
  if (hasNul(filter)) return false
  if (rights !== 'full') return false
  if (filter.startsWith('$')) return false // $SYS (and $share) are never granted to devices
  const owner = cmdTopicOwner(filter)
  if (owner !== null && owner !== '+' && owner !== deviceId) return false // another identity's commands, named
  return acl?.subscribe?.some((f) => filterCovers(f, filter)) ?? false
}

/**
 * Delivery rule, judged on each concrete topic as it is delivered (live,
 * queued for a stored session, retained) with the receiver's rights now, not
 * those it had when it subscribed (PROTOCOL §4): its own commands always,
 * anything else only with full rights and an acl filter that still matches;
 * a wildcard granted by an acl (`#`, `dev/+/cmd`, `dev/+/#`) never carries
 * another identity's commands.
 */
export function mayReceive(deviceId: string, rights: Rights, acl: TopicAcl | undefined, topic: string): boolean {
  const owner = cmdTopicOwner(topic)
  if (owner !== null) return owner === deviceId
  if (rights !== 'full') return false
  return acl?.subscribe?.some((f) => topicMatches(f, topic)) ?? false
}

/** Whether acl `outer` grants at least what `inner` grants (each filter of inner covered by one of outer). */
export function aclCovers(outer: TopicAcl | undefined, inner: TopicAcl | undefined): boolean {
  const covers = (o: readonly string[] | undefined, i: readonly string[] | undefined): boolean => (i ?? []).every((f) => (o ?? []).some((g) => filterCovers(g, f)))
  return covers(outer?.publish, inner?.publish) && covers(outer?.subscribe, inner?.subscribe)
}
