// A gateway's topics on the central broker (PROTOCOL §3):
// edgewarden/v1/<site>/<gateway>/evt (its events) and …/status (its
// retained status); wire/protocol.ts topicRoot builds them.
import { isId } from '../../wire/ids.ts'

export const STATUS_FILTER = 'edgewarden/v1/+/+/status'
export const EVENT_FILTER = 'edgewarden/v1/+/+/evt'

const GATEWAY_TOPIC = /^edgewarden\/v1\/([^/]+)\/([^/]+)\/([a-z]+)$/

/** The site and gateway of a `leaf` topic (evt or status); null for any other topic. */
export function gatewayOfTopic(topic: string, leaf: 'evt' | 'status'): { site: string; gateway: string } | null {
  const m = GATEWAY_TOPIC.exec(topic)
  if (!m || m[3] !== leaf || !isId(m[1]) || !isId(m[2])) return null
  return { site: m[1], gateway: m[2] }
}
