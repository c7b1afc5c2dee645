/**
 * imagingkit's JupyterLab extension: the "Imaging context" side panel, which follows a
 * FHIRcast topic of the hub that imagingkit's Jupyter server extension serves at
 * `{base_url}imagingkit/fhircast`, and the "Open in viewer" command, which opens the
 * current study through the IHE IID facade at `{base_url}imagingkit/iid/`.
 */

import {
  ILabShell,
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { LabIcon } from '@jupyterlab/ui-components';

import { ContextController } from './controller';
import { ContextPanel } from './panel';

const PLUGIN_ID = 'imagingkit-lab:plugin';
const DEFAULT_TOPIC = 'imagingkit';

/** Command ids. */
export namespace CommandIDs {
  export const openInViewer = 'imagingkit:open-in-viewer';
  export const showContext = 'imagingkit:show-context';
}

// a stack of slices with a cursor: "imaging context"
const icon = new LabIcon({
  name: 'imagingkit:context',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">' +
    '<g class="jp-icon3" fill="#616161">' +
    '<path d="M4 5h12v2H4zM6 9h12v2H6zM8 13h12v2H8z"/>' +
    '<circle cx="6" cy="18" r="3"/></g></svg>'
});

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'Follow the FHIRcast clinical context and open studies in a viewer.',
  autoStart: true,
  requires: [ILabShell],
  optional: [ISettingRegistry, ICommandPalette, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    shell: ILabShell,
    registry: ISettingRegistry | null,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null
  ) => {
    const controller = new ContextController();
    const panel = new ContextPanel();
    panel.title.icon = icon;

    controller.statusChanged.connect((_, status) => panel.setServerStatus(status));
    controller.connectionChanged.connect((_, { state, detail }) =>
      panel.setConnection(state, detail)
    );
    controller.contextChanged.connect((_, context) => {
      panel.setContext(context);
      app.commands.notifyCommandChanged(CommandIDs.openInViewer);
    });
    panel.openRequested.connect(() => controller.openInViewer());
    panel.setContext(controller.context);

    app.commands.addCommand(CommandIDs.openInViewer, {
      label: 'Open Current Study in Viewer',
      caption: 'Open the study of the FHIRcast context through the IHE IID facade',
      isEnabled: () => controller.viewerUrl() !== null,
      execute: () => controller.openInViewer()
    });
    app.commands.addCommand(CommandIDs.showContext, {
      label: 'Show Imaging Context',
      caption: 'Show the FHIRcast context panel',
      execute: () => shell.activateById(panel.id)
    });
    if (palette) {
      for (const command of [CommandIDs.openInViewer, CommandIDs.showContext]) {
        palette.addItem({ command, category: 'imagingkit' });
      }
    }

    shell.add(panel, 'right', { rank: 950 });
    if (restorer) {
      restorer.add(panel, 'imagingkit-context');
    }

    void controller.watchStatus();
    const follow = (topic: string) => {
      panel.setTopic(topic);
      void controller.follow(topic);
    };
    if (!registry) {
      follow(DEFAULT_TOPIC);
      panel.topicRequested.connect((_, topic) => follow(topic));
      return;
    }
    registry
      .load(PLUGIN_ID)
      .then(settings => {
        const current = () => String(settings.composite.topic || DEFAULT_TOPIC);
        follow(current());
        settings.changed.connect(() => follow(current()));
        // the topic typed in the panel is saved, so it is followed again after a reload
        panel.topicRequested.connect((_, topic) => {
          follow(topic);
          settings.set('topic', topic).catch(reason => {
            console.warn('imagingkit: the topic could not be saved', reason);
          });
        });
      })
      .catch(reason => {
        console.warn('imagingkit: settings could not be loaded; using the default topic', reason);
        follow(DEFAULT_TOPIC);
        panel.topicRequested.connect((_, topic) => follow(topic));
      });
  }
};

export default plugin;
