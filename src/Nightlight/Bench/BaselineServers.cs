using System.Buffers;
using System.Text.Json;
using MQTTnet;
using MQTTnet.Protocol;
using Nightlight.Protocol;

namespace Nightlight.Cli.Bench;

/// <summary>
/// The two baselines <c>nightlight bench</c> compares our server with: the lesson's Python server adapted to a
/// wildcard subscription, and a naive C# server that answers each message inline from MQTTnet's receive handler.
/// </summary>
static class BaselineServers
{
    /// <summary>The lesson's server (paho-mqtt 1.x), changed only to serve every device through <c>+/telemetry</c>.</summary>
    public const string LessonPython = """
        import json
        import sys
        import time

        import paho.mqtt.client as mqtt

        host, port, threshold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])

        mqtt_client = mqtt.Client('bench_lesson_server')
        mqtt_client.connect(host, port)
        mqtt_client.loop_start()

        def handle_telemetry(client, userdata, message):
            payload = json.loads(message.payload.decode())
            device_id = message.topic.split('/')[0]
            command = {'led_on': payload['light'] < threshold}
            client.publish(device_id + '/commands', json.dumps(command))

        mqtt_client.subscribe('+/telemetry')
        mqtt_client.on_message = handle_telemetry
        print('lesson server subscribed', flush=True)

        while True:
            time.sleep(2)
        """;

    /// <summary>Runs the naive C# server until cancelled: parse and publish inside the receive handler, one at a time.</summary>
    public static async Task RunNaiveAsync(string host, int port, double threshold, CancellationToken cancellationToken)
    {
        using var client = new MqttClientFactory().CreateMqttClient();
        client.ApplicationMessageReceivedAsync += async e =>
        {
            var id = e.ApplicationMessage.Topic.Split('/')[0];
            using var json = JsonDocument.Parse(e.ApplicationMessage.Payload.ToArray());
            var ledOn = json.RootElement.GetProperty("light").GetDouble() < threshold;
            await client.PublishAsync(new MqttApplicationMessageBuilder().WithTopic(Topics.Commands(id))
                .WithPayload(new CommandMessage(ledOn).ToPayload().ToArray()).Build(), cancellationToken);
        };
        await client.ConnectAsync(new MqttClientOptionsBuilder().WithTcpServer(host, port).WithClientId("bench_naive_server")
            .WithProtocolVersion(MQTTnet.Formatter.MqttProtocolVersion.V311).Build(), cancellationToken);
        await client.SubscribeAsync(new MqttClientSubscribeOptionsBuilder().WithTopicFilter(Topics.AllTelemetry, MqttQualityOfServiceLevel.AtMostOnce).Build(),
            cancellationToken);
        Console.WriteLine("naive server subscribed");
        await Task.Delay(Timeout.Infinite, cancellationToken);
    }
}
